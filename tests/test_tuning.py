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


_CACHE_PROBE = """
import os, sys
import numpy as np
from sweeperd.sys.procmem import process_memory
from sweeperd.sys.tuning import fill_numpy_cache, keep_malloc_memory, release_free_heap
keep_malloc_memory()
if sys.argv[1] == "fill":
    fill_numpy_cache()
anon = lambda: process_memory(os.getpid()).anon_bytes
rng = np.random.default_rng(7)
def burst(n):  # small temporaries of sizes that vary with the data, several alive at once
    for _ in range(n // 200):
        for size in rng.integers(1, 1024, 200).tolist():
            a = np.zeros(size, np.uint8)
            b = a + 1
            c = b[b > 0]
            del a, b, c
    release_free_heap()
burst(200)  # warm up what every run needs (code paths, ufunc loops)
before = anon()
burst(30000)  # as a worker meets new sizes cycle after cycle
print(before, anon())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_a_filled_numpy_cache_keeps_private_memory_flat():
    """numpy caches freed buffers of under 1 KiB, up to 7 per size, and malloc sees them as
    live: a process meeting new small sizes creeps by MiBs (the sweepers' 20-minute creep).
    Filled at start, the same work leaves private memory flat."""
    import subprocess
    import sys

    def growth(mode: str) -> int:
        r = subprocess.run([sys.executable, "-c", _CACHE_PROBE, mode], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        before, after = map(int, r.stdout.split())
        return after - before

    assert growth("nofill") > 1 << 20  # the control: the creep is real
    assert growth("fill") < 128 << 10
