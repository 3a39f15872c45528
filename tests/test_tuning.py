import platform

import pytest

from sweeperd.sys.tuning import keep_malloc_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_mallopt_thresholds_are_accepted_by_glibc():
    assert keep_malloc_memory() is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_heap_gives_freed_malloc_memory_back():
    """With the worker thresholds, 40 MiB of freed small buffers stay in malloc's heap (the
    private memory does not fall); release_free_heap hands their pages back to the kernel."""
    import subprocess
    import sys

    code = """
import ctypes, ctypes.util
from sweeperd.sys.procmem import process_memory
from sweeperd.sys.tuning import keep_malloc_memory, release_free_heap
import os
keep_malloc_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
anon = lambda: process_memory(os.getpid()).anon_bytes
keep = libc.malloc(64)  # allocated last: the freed buffers are not the heap's top
ptrs = [libc.malloc(1 << 20) for _ in range(40)]
for p in ptrs:
    ctypes.memset(p, 1, 1 << 20)
keep2 = libc.malloc(64)
full = anon()
for p in ptrs:
    libc.free(p)
kept = anon()
release_free_heap()
print(full, kept, anon())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    full, kept, after = map(int, r.stdout.split())
    assert kept > full - (8 << 20)  # freed, but still the process's
    assert after < kept - (30 << 20)  # given back
