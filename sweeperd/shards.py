"""Sharding the sweep across sweeper workers, with batched claims and work stealing.

Theory of operation
-------------------
At the start of a sweep phase the coordinator splits the heap's pages into one contiguous
range per worker: ``shards[i] = [cursor, end)`` in shared memory.  A worker takes its next
*chunk* of pages by advancing its own cursor, and claims (sweepgen h-2 -> h-1) every in-use
span whose start page lies in the chunk — all under the heap lock, as one vectorized step, so
a claim costs one lock round trip per chunk, never one per span.  When its own range is
exhausted it steals a chunk from the end of the range with the most pages left.

Mutators claim single spans through mcentral under the same lock, so every span is claimed
exactly once per cycle whoever gets there first; a chunk may therefore yield fewer spans than
it covers.  A chunk handed out but not yet swept is protected by its spans' sweepgen (h-1),
which is what recovery after a worker's death looks for (see :func:`unfinished`).

Invariants: shard ranges are disjoint and within the heap; a cursor only moves forward, an end
only backward; a page range is handed out at most once per cycle.
"""

from __future__ import annotations

import numpy as np

from .heap import MAX_SHARDS, SPAN_IN_USE, Heap
from .sweep import SweepStats, sweep_batch
from .sweepgen import M32, try_claim


def assign(heap: Heap, nworkers: int) -> None:
    """Split the heap's pages into ``nworkers`` equal ranges (coordinator, at sweep start)."""
    if not 1 <= nworkers <= MAX_SHARDS:
        raise ValueError(f"sweeper count must be 1..{MAX_SHARDS}, got {nworkers}")
    edges = np.linspace(0, heap.npages, nworkers + 1).astype(np.int64)
    with heap.lock:
        heap.shards[:] = 0
        heap.shards[:nworkers, 0] = edges[:-1]
        heap.shards[:nworkers, 1] = edges[1:]


def _take(heap: Heap, me: int, chunk: int) -> tuple[int, int]:
    """Next page range for worker ``me``: from its own shard, else stolen.  Lock held."""
    cur, end = (int(x) for x in heap.shards[me])
    if cur < end:
        hi = min(cur + chunk, end)
        heap.shards[me, 0] = hi
        return cur, hi
    left = heap.shards[:, 1] - heap.shards[:, 0]
    victim = int(np.argmax(left))
    if left[victim] <= 0:
        return 0, 0
    end = int(heap.shards[victim, 1])
    lo = max(int(heap.shards[victim, 0]), end - chunk)
    heap.shards[victim, 1] = lo  # steal from the far end: the owner keeps its locality
    return lo, end


def claim_next(heap: Heap, me: int, chunk_pages: int = 16384) -> np.ndarray | None:
    """Claim the spans of this worker's next chunk.  Returns the claimed start pages (maybe
    empty: the chunk held nothing to sweep), or None when no pages are left anywhere."""
    h = heap.sweepgen
    with heap.lock:
        lo, hi = _take(heap, me, chunk_pages)
        if lo >= hi:
            return None
        starts = np.flatnonzero(heap.span_state[lo:hi] == SPAN_IN_USE) + lo
        return try_claim(heap.span_sweepgen, starts, h, heap.span_owner, me)


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


def recover(heap: Heap, dead: int) -> SweepStats:
    """Finish the sweep of the spans a dead sweeper had claimed (coordinator, once it has
    reaped the process).  Committed spans are finished, the rest swept; nothing twice."""
    return sweep_batch(heap, unfinished(heap, dead), recover=True)
