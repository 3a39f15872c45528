"""Process-level tuning for the worker shells.

numpy's temporaries for a chunk of 16 Ki spans are a few hundred KiB to a few MiB: above
glibc's default mmap threshold (128 KiB, adapted upward only after frees), so each one can be
a fresh ``mmap`` whose pages fault in, and a ``munmap`` or heap trim after it.  Measured on
this VM, that made one of two concurrent sweepers ~1.7x slower per span.  Raising the mmap
and trim thresholds keeps temporaries in the reused malloc heap.  Memory held stays bounded by
the peak a worker really uses (tens of MiB), and the calls are best-effort: on a libc without
``mallopt`` nothing changes.

Those thresholds keep, between bursts of work, what the last burst freed.  Once per burst
(a sweeper's sweep phase, a mutator's mark) :func:`release_free_heap` gives the free pages of
malloc's heap back (``malloc_trim``: whole free pages anywhere in the heap, not only its top),
so a worker's private memory follows what it holds, not the highest it ever reached or the
slow creep of a fragmenting heap; a burst re-faults a few MiB, once, not per temporary.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL | None:
    """The C library, loaded once (each ``CDLL`` makes a new function-pointer class: loading
    it per call grew a worker that trims twice a second by kilobytes a minute)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name:
            try:
                _libc = ctypes.CDLL(name)
            except OSError:
                return None
    return _libc


def keep_malloc_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Returns True if both thresholds were set."""
    libc = _c()
    try:
        return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
    except AttributeError:
        return False


def release_free_heap() -> bool:
    """Return malloc's free pages to the kernel (glibc ``malloc_trim(0)``); True if any."""
    libc = _c()
    try:
        return libc is not None and bool(libc.malloc_trim(0))
    except AttributeError:
        return False
