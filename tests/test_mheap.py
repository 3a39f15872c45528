import numpy as np
import pytest

from sweeperd.errors import HeapCorrupt, OutOfMemory
from sweeperd.runtime import mheap
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import H_SEARCH_ADDR, SPAN_IN_USE


def test_fresh_heap_is_free_and_scavenged(heap):
    assert (heap.page_span == -1).all()
    assert heap.scavenged.all()
    check_heap(heap)


def test_alloc_reports_and_clears_scavenged(heap):
    s, nscav = mheap.alloc_span(heap, 0, 5)
    assert (s, nscav) == (0, 5)
    assert (heap.page_span[0:5] == 0).all() and not heap.scavenged[0:5].any()
    assert heap.span_state[0] == SPAN_IN_USE and heap.span_nelems[0] == 1
    mheap.free_spans(heap, np.array([s]))
    # reused pages are backed now: no scavenged pages to report
    s2, nscav2 = mheap.alloc_span(heap, 0, 3)
    assert (s2, nscav2) == (0, 0)
    check_heap(heap)


def test_free_coalesces_with_both_neighbours(heap):
    a, _ = mheap.alloc_span(heap, 0, 2)
    b, _ = mheap.alloc_span(heap, 0, 3)
    c, _ = mheap.alloc_span(heap, 0, 4)
    d, _ = mheap.alloc_span(heap, 0, 1)  # keeps the run bounded on the right
    assert (a, b, c, d) == (0, 2, 5, 9)
    mheap.free_spans(heap, np.array([a]))
    mheap.free_spans(heap, np.array([c]))
    mheap.free_spans(heap, np.array([b]))
    # one free run of 9 pages now: a 9-page span fits at page 0
    e, _ = mheap.alloc_span(heap, 0, 9)
    assert e == 0
    check_heap(heap)


def test_prefers_unscavenged_pages(heap):
    spans, _ = mheap.alloc_spans(heap, 6, 10)
    mheap.free_spans(heap, spans[5:])
    # pages 5..9 are free and backed; everything above is fresh (scavenged)
    heap.scavenged[5] = 1  # pretend the scavenger released page 5
    s, nscav = mheap.alloc_span(heap, 6)
    assert (s, nscav) == (6, 0)
    more, nscav = mheap.alloc_spans(heap, 6, 5)
    assert more.tolist() == [5, 7, 8, 9, 10]  # unscavenged 7..9 first, then 5 and 10
    assert nscav == 2  # page 5 and fresh page 10
    check_heap(heap)


def test_out_of_memory_is_named(heap):
    mheap.alloc_span(heap, 0, heap.npages - 1)
    with pytest.raises(OutOfMemory, match="no free run of 2 pages"):
        mheap.alloc_span(heap, 0, 2)
    spans, _ = mheap.alloc_spans(heap, 6, 5)
    assert spans.size == 1


def test_bad_requests(heap):
    with pytest.raises(ValueError, match="explicit page count"):
        mheap.alloc_span(heap, 0)
    with pytest.raises(ValueError, match="one-page"):
        mheap.alloc_spans(heap, 0, 3)
    with pytest.raises(ValueError, match="pages"):
        mheap.alloc_span(heap, 6, 2)


def test_free_is_idempotent_and_search_addr_drops(heap):
    spans, _ = mheap.alloc_spans(heap, 6, 8)
    assert heap.header[H_SEARCH_ADDR] <= 8
    assert mheap.free_spans(heap, spans[3:5]) == 2
    assert mheap.free_spans(heap, spans[3:5]) == 0
    assert heap.header[H_SEARCH_ADDR] <= 3
    check_heap(heap)


def test_corrupt_page_map_is_loud(heap):
    s, _ = mheap.alloc_span(heap, 0, 3)
    heap.page_span[1] = 99
    with pytest.raises(HeapCorrupt, match="another span"):
        mheap.free_spans(heap, np.array([s]))


def test_repair_frees_pages_of_a_span_whose_free_was_cut_short(heap):
    s, _ = mheap.alloc_span(heap, 0, 4)
    t, _ = mheap.alloc_span(heap, 0, 2)
    heap.span_owner[s], heap.span_owner[t] = 7, 8
    heap.span_state[s] = heap.span_state[t] = 0  # 7 died mid-free; 8 is mid-free, alive
    with pytest.raises(HeapCorrupt):
        check_heap(heap)
    with heap.lock:
        assert mheap.repair(heap, 7) == 4
        assert mheap.repair(heap, 7) == 0
    assert (heap.page_span[t : t + 2] == t).all()  # a live sweeper's pages are not touched
    heap.page_span[t : t + 2] = -1  # ... it finishes its own free
    check_heap(heap)


def test_helpers_that_need_the_heap_lock_fail_by_name_without_it(heap):
    from sweeperd.errors import LockNotHeld
    from sweeperd.runtime import shards

    with pytest.raises(LockNotHeld, match=r"mheap\.repair needs the heap lock"):
        mheap.repair(heap, 3)
    with pytest.raises(LockNotHeld, match=r"mheap\.init_spans"):
        mheap.init_spans(heap, np.array([0]), 1, 6)
    with pytest.raises(LockNotHeld, match=r"shards\.open_for_claim"):
        shards.open_for_claim(heap, 0)
    with heap.lock:  # and pass with it; the allocating entry points take it themselves
        assert mheap.repair(heap, 3) == 0
    s, _ = mheap.alloc_span(heap, 6)
    assert not heap.lock.held and heap.span_state[s] == SPAN_IN_USE
