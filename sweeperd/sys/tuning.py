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

numpy keeps freed data buffers of under 1 KiB in a cache of its own (its default allocator:
up to 7 buffers for each byte size below 1024, about 3.6 MB of buffers and 4.6 MiB of private
memory once malloc's overhead and the pages they pin are counted).  To malloc those buffers are
live, so no trim returns them; the cache fills as new sizes turn up, which is why a sweeper's
private memory crept by ~2 MiB over 20 minutes and slowed down (heaptrack on a live sweeper:
every byte still allocated after 6 minutes came from ``PyDataMem_UserNEW``).  It is bounded,
but a creep that stops only at its bound looks like a leak to whoever watches.
:func:`fill_numpy_cache` fills it once at the worker's start, so memory is flat from there.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

NUMPY_CACHED_SIZES = 1024  # numpy's NBUCKETS: freed data buffers under 1 KiB are cached
NUMPY_CACHE_DEPTH = 7  # numpy's NCACHE: at most this many buffers of each size


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


def fill_numpy_cache() -> int:
    """Fill numpy's small-buffer cache to its bound (see the module's notes); returns the
    bytes of buffers handed to it.  Harmless where numpy caches differently or not at all:
    the buffers are then simply freed."""
    held = [np.empty(size, np.uint8) for size in range(1, NUMPY_CACHED_SIZES)
            for _ in range(NUMPY_CACHE_DEPTH)]
    total = sum(a.nbytes for a in held)
    del held  # each freed into its size's bucket, up to the depth
    return total


def prepare_worker_memory() -> None:
    """A worker shell's first call: malloc's thresholds, then numpy's cache at its bound."""
    keep_malloc_memory()
    fill_numpy_cache()
