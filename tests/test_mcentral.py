import numpy as np

from sweeperd.runtime import malloc, mark, mcentral, mheap
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import SPAN_IN_USE
from sweeperd.runtime.sweepgen import SweepState, state_of, try_claim

from .conftest import start_cycle


def _fill(heap, s, live):
    malloc.alloc_objects(heap, s, int(heap.span_nelems[s]))
    if live:
        mark.mark_objects(heap, np.full(len(live), s), np.array(live))


def test_cache_span_grows_heap_when_sets_are_empty(heap):
    s, nscav, work = mcentral.cache_span(heap, 6)
    assert nscav == 1 and work.spans == 0
    assert state_of(int(heap.span_sweepgen[s]), heap.sweepgen) == SweepState.CACHED_SWEPT


def test_cache_span_prefers_partial_swept_then_sweeps_unswept_as_a_batch(heap):
    spans, _ = mheap.alloc_spans(heap, 6, 3)
    for s, live in zip(spans, ([0, 1], list(range(128)), []), strict=True):
        _fill(heap, int(s), live)
    h = heap.sweepgen
    heap.span_set[spans] = mcentral.full_swept(h)  # all full when the cycle ends
    h = start_cycle(heap)
    # cycle h: all three are full-unswept, claimed and swept as one batch: span 0 has room
    # and is cached, span 1 is still full, span 2 emptied and went back to the page heap
    got, nscav, work = mcentral.cache_span(heap, 6)
    assert got == spans[0] and nscav == 0 and work.spans == 3 and work.spans_freed == 1
    assert heap.span_alloc_count[got] == 2
    assert heap.span_set[spans[1]] == mcentral.full_swept(h)
    assert heap.span_state[spans[2]] != SPAN_IN_USE
    # uncache: it goes to partial-swept and is the first choice next time
    mcentral.uncache_span(heap, got)
    assert heap.span_set[got] == mcentral.partial_swept(h)
    again, _, work = mcentral.cache_span(heap, 6)
    assert again == got and work.spans == 0
    mcentral.uncache_span(heap, again)
    check_heap(heap)


def test_full_unswept_that_stays_full_goes_to_full_swept(heap):
    spans, _ = mheap.alloc_spans(heap, 6, 2)
    for s in spans:
        _fill(heap, int(s), list(range(128)))
    heap.span_set[spans] = mcentral.full_swept(heap.sweepgen)
    h = start_cycle(heap)
    got, _, work = mcentral.cache_span(heap, 6)
    assert work.spans == 2  # both swept, both still full
    assert got not in spans.tolist()  # so the heap grew
    assert (heap.span_set[spans] == mcentral.full_swept(h)).all()


def test_stale_uncache_sweeps(heap):
    s, _, _ = mcentral.cache_span(heap, 6)
    _fill(heap, s, [3])
    start_cycle(heap)  # s was cached before the sweep began: h+1
    assert try_claim(heap.span_sweepgen, np.array([s]), heap.sweepgen).size == 0
    work = mcentral.uncache_span(heap, s)
    assert work.spans == 1 and work.objects_freed == 127
    assert heap.span_alloc_count[s] == 1
    check_heap(heap)


def test_cache_spans_batches_growth_and_reuses_partial_swept_first(heap):
    cand = mcentral.Candidates()
    spans, nscav, work = mcentral.cache_spans(heap, 6, 8, owner=33, cand=cand)
    assert spans.size == 8 and nscav == 8 and work.spans == 0  # grown in one batch
    h = heap.sweepgen
    assert (heap.span_sweepgen[spans] == h + 3).all() and (heap.span_owner[spans] == 33).all()
    assert sorted(mcentral.cached_by(heap, 33).tolist()) == sorted(spans.tolist())
    malloc.alloc_objects(heap, int(spans[0]), 5)
    mcentral.uncache_spans(heap, spans, cand)
    assert heap.span_set[spans[0]] == mcentral.partial_swept(h)
    assert (heap.span_set[spans[1:]] == mcentral.partial_swept(h)).all()  # empty: has room
    again, _, _ = mcentral.cache_spans(heap, 6, 3, cand=cand)
    assert set(again.tolist()) <= set(spans.tolist())  # reuse before growth
    assert mcentral.uncache_spans(heap, again).spans == 0
    check_heap(heap)


def test_stale_candidates_are_rechecked_under_the_lock(heap):
    cand = mcentral.Candidates()
    s, _, _ = mcentral.cache_span(heap, 6, cand=cand)
    _fill(heap, s, [])
    mcentral.uncache_span(heap, s)  # full now
    # make the candidate list believe s is partial-swept, then let someone else take it
    heap.span_set[s] = mcentral.partial_swept(heap.sweepgen)
    cand.take(heap, 6, mcentral.partial_swept(heap.sweepgen), 0)  # scan: s is listed
    heap.span_set[s] = mcentral.full_swept(heap.sweepgen)
    got, _, _ = mcentral.cache_span(heap, 6, cand=cand)
    assert got != s  # the stale candidate was refused
