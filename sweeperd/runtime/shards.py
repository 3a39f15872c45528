"""Sharding the sweep across sweeper workers, with batched claims and work stealing.

Theory of operation
-------------------
At the start of a sweep phase the coordinator splits the heap's pages into one contiguous
range per worker: ``shards[i] = (cursor, end, lo, hi, clo, chi)`` in shared memory:
``[cursor, end)`` still to hand out of the original ``[lo, hi)``, and ``[clo, chi)`` the last
chunk claimer ``i`` took (what recovery must finish if ``i`` dies).  A worker takes its next
*chunk* of pages by advancing its own cursor under the heap lock (one lock round trip per
chunk, never one per span); when its own range is exhausted it steals a chunk from the end of
the range with the most pages left.

A handed-out chunk belongs to its taker alone: it claims (sweepgen h-2 -> h-1, claimer id in
``span_owner``) every in-use span starting in it *outside* the lock, since no other sweeper gets
those pages, and mutators claim single spans (mcentral's on-demand sweep) only where
:func:`open_for_claim` says the pages have not been handed out — a test made under the same
lock as the hand-out.  So every span is claimed exactly once per cycle, by whoever gets there
first, and the lock is held for microseconds per chunk.  A chunk handed out but not yet swept
is protected by its spans' sweepgen (h-1), which is what recovery after a worker's death
looks for (see :func:`unfinished`).

Invariants: shard ranges are disjoint and within the heap; a cursor only moves forward, an end
only backward; a page range is handed out at most once per cycle.
"""

from __future__ import annotations

import numpy as np

from sweeperd.runtime.heap import SPAN_IN_USE, Heap
from sweeperd.runtime.owners import MAX_SWEEPERS
from sweeperd.runtime.sweepgen import M32, try_claim


def assign(heap: Heap, nworkers: int) -> None:
    """Split the heap's pages into ``nworkers`` equal ranges (coordinator, at sweep start)."""
    if not 1 <= nworkers <= MAX_SWEEPERS:
        raise ValueError(f"sweeper count must be 1..{MAX_SWEEPERS}, got {nworkers}")
    edges = np.linspace(0, heap.npages, nworkers + 1).astype(np.int64)
    with heap.lock:
        heap.shards[:] = 0
        heap.shards[:nworkers, 0] = heap.shards[:nworkers, 2] = edges[:-1]
        heap.shards[:nworkers, 1] = heap.shards[:nworkers, 3] = edges[1:]


def _take(heap: Heap, me: int, chunk: int) -> tuple[int, int]:
    """Next page range for worker ``me``: from its own shard, else stolen."""
    heap.require_lock("shards._take")
    cur, end = int(heap.shards[me, 0]), int(heap.shards[me, 1])
    if cur < end:
        lo, hi = cur, min(cur + chunk, end)
        heap.shards[me, 0] = hi
    else:
        left = heap.shards[:, 1] - heap.shards[:, 0]
        victim = int(np.argmax(left))
        if left[victim] <= 0:
            lo = hi = 0
        else:
            hi = int(heap.shards[victim, 1])
            lo = max(int(heap.shards[victim, 0]), hi - chunk)
            heap.shards[victim, 1] = lo  # steal from the far end: the owner keeps locality
    heap.shards[me, 4], heap.shards[me, 5] = lo, hi
    return lo, hi


def claim_next(heap: Heap, me: int, chunk_pages: int = 16384) -> np.ndarray | None:
    """Claim the spans of this worker's next chunk.  Returns the claimed start pages (maybe
    empty: the chunk held nothing to sweep), or None when no pages are left anywhere."""
    h = heap.sweepgen
    with heap.lock:
        lo, hi = _take(heap, me, chunk_pages)
    if lo >= hi:
        return None
    # [lo, hi) is ours alone now: claim without the lock (see the module comment)
    starts = np.flatnonzero(heap.span_state[lo:hi] == SPAN_IN_USE) + lo
    return try_claim(heap.span_sweepgen, starts, h, heap.span_owner, me)


def release_chunk(heap: Heap, me: int) -> None:
    """The claimer has swept its last chunk: it is no longer in flight (own row, no lock)."""
    heap.shards[me, 4] = heap.shards[me, 5] = 0


def in_flight(heap: Heap) -> bool:
    """Has some claimer taken a chunk it has not released?  Until none has, spans may still
    be claimed outside the lock, and nobody else may claim in handed-out pages."""
    return bool((heap.shards[:, 4] < heap.shards[:, 5]).any())


def open_for_claim(heap: Heap, span: int) -> bool:
    """May a mutator claim ``span`` itself?  Only if its page has not been handed out to a
    sweeper's chunk this cycle.  Call with the heap lock held."""
    heap.require_lock("shards.open_for_claim")
    sh = heap.shards
    row = np.flatnonzero((sh[:, 2] <= span) & (span < sh[:, 3]))
    if row.size == 0:
        return True  # no shards cover it (no sweep running): the sweepgen decides alone
    cur, end = int(sh[row[0], 0]), int(sh[row[0], 1])
    return cur <= span < end


def open_for_claim_many(heap: Heap, spans: np.ndarray, locked: bool = True) -> np.ndarray:
    """:func:`open_for_claim` of each of ``spans`` at once (a boolean mask).  ``locked``
    False: a read without the heap lock, only a filter before the decisive check under it
    (a shard moving meanwhile may make it wrong either way)."""
    if locked:
        heap.require_lock("shards.open_for_claim_many")
    sh = heap.shards
    spans = np.asarray(spans, dtype=np.int64)
    within = (sh[:, 2, None] <= spans) & (spans < sh[:, 3, None])  # (shards, spans)
    handed = within & ~((sh[:, 0, None] <= spans) & (spans < sh[:, 1, None]))
    return np.asarray(~handed.any(axis=0), dtype=bool)


def remaining_pages(heap: Heap) -> int:
    return int((heap.shards[:, 1] - heap.shards[:, 0]).clip(min=0).sum())


def unswept(heap: Heap) -> np.ndarray:
    """In-use spans still needing a sweep this cycle (h-2)."""
    h = heap.sweepgen
    return np.flatnonzero((heap.span_state == SPAN_IN_USE)
                          & (heap.span_sweepgen == (h - 2) & M32))


def unfinished(heap: Heap, owner: int | None = None) -> np.ndarray:
    """In-use spans claimed but not finished (h-1), all or those of one claimer."""
    h = heap.sweepgen
    m = (heap.span_state == SPAN_IN_USE) & (heap.span_sweepgen == (h - 1) & M32)
    if owner is not None:
        m &= heap.span_owner == owner
    return np.flatnonzero(m)
