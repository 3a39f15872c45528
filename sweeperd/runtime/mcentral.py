"""mcentral: per size class, the partial/full × swept/unswept span sets.

Theory of operation
-------------------
Go keeps, per span class, two pairs of span sets: ``partial[2]`` and ``full[2]``.  Which
element of a pair holds swept spans flips every cycle by the parity of ``sweepgen / 2``:
``partial[h/2 % 2]`` is partial-swept and ``partial[1 - h/2 % 2]`` partial-unswept.  So when
the heap's sweepgen advances by 2, every swept set becomes unswept without touching a span.

Set membership is a per-span byte (spanset.py).  A set's members are found by one
vectorized scan over the span table (`members`); sweepers and mutators take many at once.

:func:`cache_span` is Go's ``mcentral.cacheSpan``: partial-swept first; then sweep
partial-unswept spans (each has room once swept); then sweep full-unswept spans, keeping the
first that has room, within a budget of 100 (Go's spanBudget); then grow the heap.
:func:`uncache_span` is ``mcentral.uncacheSpan``.
"""

from __future__ import annotations

import numpy as np

from sweeperd.runtime import shards
from sweeperd.runtime import sweep as _sweep
from sweeperd.runtime import sweepgen as sg
from sweeperd.runtime.heap import C_CACHED_PAGES, SPAN_IN_USE, Heap
from sweeperd.runtime.mheap import alloc_span, alloc_spans
from sweeperd.runtime.owners import ANONYMOUS
from sweeperd.runtime.sizeclasses import CLASS_NPAGES
from sweeperd.runtime.spanset import (
    SET_NONE,
    full_swept,
    full_unswept,
    partial_swept,
    partial_unswept,
)

SPAN_BUDGET = 100


def members(heap: Heap, sizeclass: int, set_id: int, limit: int | None = None) -> np.ndarray:
    """Start pages of the spans of ``sizeclass`` in set ``set_id``, ascending."""
    found = np.flatnonzero(
        (heap.span_set == set_id)
        & (heap.span_class == sizeclass)
        & (heap.span_state == SPAN_IN_USE)
    )
    return found if limit is None else found[:limit]


class Candidates:
    """A process's possibly stale view of set members, so that a mutator scans the span
    table once per many refills instead of three times per refill.

    Lists are taken from the front; an exhausted list is refilled by one scan, and a scan that
    found nothing is not repeated for the next ``retry_after`` asks (the heap grows meanwhile,
    as Go's does when a span set looks empty).  Staleness is harmless: every candidate is
    re-checked under the heap lock (its set, class and state, or its sweepgen by the claim).
    """

    def __init__(self, retry_after: int = 32, scan_limit: int = 4096) -> None:
        self.retry_after = retry_after
        self.scan_limit = scan_limit
        self.h = -1
        self.lists: dict[tuple[int, int], np.ndarray] = {}
        self.skip: dict[tuple[int, int], int] = {}

    def take(self, heap: Heap, sizeclass: int, set_id: int, n: int) -> np.ndarray:
        if heap.sweepgen != self.h:  # set ids change meaning every cycle
            self.h, self.lists, self.skip = heap.sweepgen, {}, {}
        key = (sizeclass, set_id)
        lst = self.lists.get(key)
        if lst is None or lst.size == 0:
            if self.skip.get(key, 0) > 0:
                self.skip[key] -= 1
                return np.empty(0, dtype=np.int64)
            lst = members(heap, sizeclass, set_id, limit=self.scan_limit)
            if lst.size == 0:
                self.skip[key] = self.retry_after
        self.lists[key] = lst[n:]
        return lst[:n]

    def note(self, heap: Heap, sizeclass: int, set_id: int, spans: np.ndarray) -> None:
        """This process just put ``spans`` in a set: they are candidates, no scan needed."""
        if heap.sweepgen != self.h or not spans.size:
            return
        key = (sizeclass, set_id)
        self.lists[key] = np.concatenate((self.lists.get(key, spans[:0]), spans))
        self.skip.pop(key, None)


def _scan(heap: Heap, sizeclass: int, set_id: int, n: int,
          cand: Candidates | None) -> np.ndarray:
    if cand is None:
        return members(heap, sizeclass, set_id, limit=n)
    return cand.take(heap, sizeclass, set_id, n)


def cache_span(heap: Heap, sizeclass: int, owner: int = ANONYMOUS,
               cand: Candidates | None = None) -> tuple[int, int, _sweep.SweepStats]:
    """A span of ``sizeclass`` with at least one free slot, cached for a mutator (h+3).

    ``owner`` is recorded on the spans this call claims for sweeping and on the span it
    caches, so that if the mutator dies the coordinator can take them back.  ``cand`` is the
    caller's :class:`Candidates` (a full scan per set otherwise).

    Returns (span, scavenged pages it brought in, sweep work done on the way).  Raises
    :class:`~sweeperd.errors.OutOfMemory` when the heap cannot grow.
    """
    h = heap.sweepgen
    work = _sweep.SweepStats()
    span = -1
    nscav = 0
    ps = partial_swept(h)
    while span < 0:
        got = _scan(heap, sizeclass, ps, 8, cand)
        if got.size == 0:
            break
        with heap.lock:
            ok = ((heap.span_set[got] == ps) & (heap.span_class[got] == sizeclass)
                  & (heap.span_state[got] == SPAN_IN_USE))
            if ok.any():
                span = int(got[np.argmax(ok)])
                heap.span_set[span] = SET_NONE
    budget = SPAN_BUDGET
    for set_id in (partial_unswept(h), full_unswept(h)):
        while span < 0 and budget > 0:
            got = _scan(heap, sizeclass, set_id, min(budget, 16), cand)
            if got.size == 0:
                break
            budget -= int(got.size)
            got = got[shards.open_for_claim_many(heap, got, locked=False)]  # (a filter)
            if got.size == 0:
                continue  # all in sweepers' chunks: no lock taken to learn it
            with heap.lock:
                ok = (heap.span_class[got] == sizeclass) & shards.open_for_claim_many(heap, got)
                mine = sg.try_claim(heap.span_sweepgen, got[ok], h, heap.span_owner, owner)
            if mine.size == 0:
                continue  # another sweeper has them, or they are already swept
            # swept as one batch: the emptied go back to the page heap, the rest to their
            # swept sets (Go sweeps one at a time until one has room; the others are swept
            # this cycle anyway)
            work.add(_sweep.sweep_batch(heap, mine))
            room = mine[heap.span_set[mine] == ps]
            if room.size:
                with heap.lock:
                    ok = ((heap.span_set[room] == ps) & (heap.span_class[room] == sizeclass)
                          & (heap.span_state[room] == SPAN_IN_USE))
                    if ok.any():
                        span = int(room[np.argmax(ok)])
                        heap.span_set[span] = SET_NONE
                if cand is not None:
                    cand.note(heap, sizeclass, ps, room[room != span])
    with heap.lock:
        if span < 0:
            span, nscav = alloc_span(heap, sizeclass, int(CLASS_NPAGES[sizeclass]))
        heap.span_set[span] = SET_NONE
        heap.span_owner[span] = owner
        sg.cache(heap.span_sweepgen, span, h)
        heap.count(C_CACHED_PAGES, int(heap.span_npages[span]))
    if nscav and heap.on_alloc_scav is not None:  # Go 1.21's scavenge assist (scavenge.py)
        heap.on_alloc_scav(nscav)
    return span, nscav, work


def cache_spans(heap: Heap, sizeclass: int, k: int, owner: int = ANONYMOUS,
                cand: Candidates | None = None) -> tuple[np.ndarray, int, _sweep.SweepStats]:
    """Up to ``k`` spans of a small class with room, cached at once (h+3).

    The batched refill of a mutator that wants speed: partial-swept spans first (validated in
    one step under the lock); if there are none, one span exactly as :func:`cache_span` gets
    it (on-demand sweep, else growth) — and if that span came from growth, the heap grows by
    the rest of the batch in one ``alloc_spans``.  One lock round trip per batch, not per span.
    """
    if sizeclass == 0:
        raise ValueError("cache_spans is for small classes, not class 0")
    h = heap.sweepgen
    ps = partial_swept(h)
    got = _scan(heap, sizeclass, ps, k, cand)
    if got.size:
        with heap.lock:
            got = got[(heap.span_set[got] == ps) & (heap.span_class[got] == sizeclass)
                      & (heap.span_state[got] == SPAN_IN_USE)
                      & (heap.span_sweepgen[got] == sg.at(h, sg.SweepState.SWEPT))]
            _cache_many(heap, got, owner, h)
        if got.size:
            return got, 0, _sweep.SweepStats()
    s, nscav, work = cache_span(heap, sizeclass, owner, cand)
    if k > 1 and work.spans == 0 and heap.span_alloc_count[s] == 0:
        # the heap grew to give us that span: grow by the rest of the batch at once
        with heap.lock:
            grown, more = alloc_spans(heap, sizeclass, k - 1)
            _cache_many(heap, grown, owner, h)
        if more and heap.on_alloc_scav is not None:
            heap.on_alloc_scav(more)
        return np.concatenate(([s], grown)).astype(np.int64), nscav + more, work
    return np.array([s], dtype=np.int64), nscav, work


def _cache_many(heap: Heap, spans: np.ndarray, owner: int, h: int) -> None:
    """Cache swept spans for ``owner``."""
    heap.require_lock("mcentral._cache_many")
    heap.span_set[spans] = SET_NONE
    heap.span_owner[spans] = owner
    heap.span_sweepgen[spans] = sg.at(h, sg.SweepState.CACHED_SWEPT)
    heap.count(C_CACHED_PAGES, int(heap.span_npages[spans].sum(dtype=np.int64)))


def uncache_span(heap: Heap, span: int) -> _sweep.SweepStats:
    """A mutator returns a cached span.  A stale one (cached before this sweep began) is
    swept now by the caller; a swept one goes to its partial- or full-swept set."""
    h = heap.sweepgen
    with heap.lock:
        stale = sg.uncache(heap.span_sweepgen, span, h)
        heap.count(C_CACHED_PAGES, -int(heap.span_npages[span]))
    if stale:  # owned by the uncacher now (span_owner already names it), h-1
        return _sweep.sweep_batch(heap, np.array([span]))
    with heap.lock:
        if heap.span_alloc_count[span] < heap.span_nelems[span]:
            heap.span_set[span] = partial_swept(h)
        else:
            heap.span_set[span] = full_swept(h)
    return _sweep.SweepStats()


def uncache_spans(heap: Heap, spans: np.ndarray,
                  cand: Candidates | None = None) -> _sweep.SweepStats:
    """:func:`uncache_span` for many spans: the swept ones in one step under the lock, any
    stale one (cached before this sweep began) swept by the caller, one by one.  Spans that
    still have room are noted in ``cand``, the caller's candidates."""
    spans = np.asarray(spans, dtype=np.int64)
    h = heap.sweepgen
    work = _sweep.SweepStats()
    with heap.lock:
        swept = spans[heap.span_sweepgen[spans] == sg.at(h, sg.SweepState.CACHED_SWEPT)]
        full = heap.span_alloc_count[swept] >= heap.span_nelems[swept]
        heap.span_sweepgen[swept] = sg.at(h, sg.SweepState.SWEPT)
        heap.count(C_CACHED_PAGES, -int(heap.span_npages[swept].sum(dtype=np.int64)))
        heap.span_set[swept[full]] = full_swept(h)
        heap.span_set[swept[~full]] = partial_swept(h)
    if cand is not None and swept.size:
        for c in np.unique(heap.span_class[swept[~full]]).tolist():
            room = swept[~full]
            cand.note(heap, c, partial_swept(h), room[heap.span_class[room] == c])
    if swept.size < spans.size:
        for s in np.setdiff1d(spans, swept).tolist():
            work.add(uncache_span(heap, s))
    return work


def cached_by(heap: Heap, owner: int) -> np.ndarray:
    """Spans cached by mutator ``owner`` (h+1 or h+3): what to take back if it dies."""
    h = heap.sweepgen
    sgs = heap.span_sweepgen
    return np.flatnonzero((heap.span_state == SPAN_IN_USE) & (heap.span_owner == owner)
                          & ((sgs == sg.at(h, sg.SweepState.CACHED_SWEPT))
                             | (sgs == sg.at(h, sg.SweepState.CACHED_UNSWEPT))))
