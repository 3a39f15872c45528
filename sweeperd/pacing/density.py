"""Go 1.21's scavenge index: the density rule of the background scavenger, over the page table.

Theory of operation
-------------------
Go 1.21 (runtime/mgcscavenge.go, ``scavengeIndex``, ``scavChunkData``) keeps, for every 4 MiB
chunk of the heap (``pallocChunkPages`` = 512 pages of 8 KiB), how many of its pages are in
use (``inUse``) and how many were in use when the scavenger's generation last moved
(``lastInUse``); ``scavengeIndex.nextGen`` moves it once per GC cycle, at mark termination
(runtime/mgc.go ``gcMarkTermination``: "this moment represents peak heap in use").
``scavChunkData.shouldScavenge(gen, force=false)`` — the background scavenger's test in
``scavengeIndex.find`` — skips a chunk that is dense now or was dense at the last generation
change: ``inUse >= scavChunkHiOccPages`` or ``lastInUse >= scavChunkHiOccPages``, with
``scavChunkHiOccPages = 0.96875 * 512 = 496``.  Forced scavenging (``debug.FreeOSMemory``,
and the allocator's scavenging to keep the memory limit) passes ``force=true`` and skips no
dense chunk.

Mapping: sweeperd's page is Go's (8 KiB, ``sizeclasses.PAGE_SIZE``), so a chunk is 512
consecutive entries of the page table; chunk ``i`` holds pages ``[512 i, 512 i + 512)`` (the
last chunk may be short: its in-use count is over the pages it has, against the same 496).
A page is in use when ``page_span >= 0``; a free page a releaser has taken
(``scavenging(owner)``) counts as free (Go marks the pages it is scavenging allocated in the
bitmap for the while, and frees them again: the count it ends with is the free one).

Go's ``lastInUse`` is written lazily (at a chunk's first alloc or free of a new generation:
the count then, which is the count at the generation change).  Here the same figure is a
snapshot of every chunk's count, taken by :meth:`Index.observe` at the scavenger's first wake
after the generation moved (sweeperd's generation is ``sweepgen // 2``: ``sweepgen`` moves by
2 at every mark termination, where Go calls ``nextGen``).  The snapshot is late by at most one
scavenger wake — the one difference from Go, stated here and in the README.

Invariants: :func:`allow_mask` never allows a page of a chunk with ``in_use >= HI_OCC_PAGES``
now or at the last snapshot; with no snapshot yet (the first generation), only the count now
decides (Go: a chunk not touched since an older generation is judged by ``inUse`` alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_PAGES = 512  # Go's pallocChunkPages: a 4 MiB chunk of 8 KiB pages
HI_OCC_FRAC = 0.96875  # Go's scavChunkHiOccFrac
HI_OCC_PAGES = int(HI_OCC_FRAC * CHUNK_PAGES)  # Go's scavChunkHiOccPages: 496


def chunk_in_use(page_span: np.ndarray) -> np.ndarray:
    """Pages in use (``page_span >= 0``) per chunk of :data:`CHUNK_PAGES`, over the whole
    table (Go's ``scavChunkData.inUse`` of every chunk); the last chunk may be short."""
    n = int(page_span.size)
    nchunks = -(-n // CHUNK_PAGES)
    used = np.zeros(nchunks * CHUNK_PAGES, dtype=bool)
    used[:n] = page_span >= 0
    return used.reshape(nchunks, CHUNK_PAGES).sum(axis=1, dtype=np.int64)


def should_scavenge(in_use: np.ndarray, last_in_use: np.ndarray | None) -> np.ndarray:
    """Per chunk: may the background scavenger look at it (Go's
    ``scavChunkData.shouldScavenge(gen, force=false)``, leaving out the ``isEmpty`` flag,
    whose work the search's own test — free and unscavenged pages — does)."""
    ok = in_use < HI_OCC_PAGES
    if last_in_use is not None:
        ok &= last_in_use < HI_OCC_PAGES
    return ok


def allow_mask(page_span: np.ndarray, last_in_use: np.ndarray | None, lo: int,
               hi: int) -> np.ndarray:
    """Mask over pages ``[lo, hi)``: is the page's chunk one the background scavenger may
    take from (counts now from ``page_span``, then from ``last_in_use``)?"""
    c_lo, c_hi = lo // CHUNK_PAGES, -(-hi // CHUNK_PAGES)
    n = int(page_span.size)
    p_lo, p_hi = c_lo * CHUNK_PAGES, min(c_hi * CHUNK_PAGES, n)
    used = np.zeros((c_hi - c_lo) * CHUNK_PAGES, dtype=bool)
    used[: p_hi - p_lo] = page_span[p_lo:p_hi] >= 0
    in_use = used.reshape(-1, CHUNK_PAGES).sum(axis=1, dtype=np.int64)
    last = None if last_in_use is None else last_in_use[c_lo:c_hi]
    ok = should_scavenge(in_use, last)
    return np.repeat(ok, CHUNK_PAGES)[lo - p_lo: hi - p_lo]


@dataclass
class Index:
    """The part of Go's ``scavengeIndex`` the density rule needs: the generation last seen
    and every chunk's in-use count at its change (``lastInUse``)."""

    gen: int = -1
    last_in_use: np.ndarray | None = None

    def observe(self, gen: int, page_span: np.ndarray) -> bool:
        """At a wake: if the generation moved since the last, snapshot the counts (Go's
        ``nextGen`` followed by each chunk's lazy ``lastInUse``).  Returns whether it moved.
        The first generation seen takes no snapshot (nothing is known of the one before)."""
        if gen == self.gen:
            return False
        if self.gen >= 0:
            self.last_in_use = chunk_in_use(page_span)
        self.gen = gen
        return True

    def dense_chunks(self, page_span: np.ndarray) -> int:
        """Chunks the background scavenger skips now (for a figure)."""
        return int(np.count_nonzero(~should_scavenge(chunk_in_use(page_span),
                                                     self.last_in_use)))
