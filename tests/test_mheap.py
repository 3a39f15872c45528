import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeperd.errors import HeapCorrupt, OutOfMemory
from sweeperd.runtime import mheap
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import H_SEARCH_ADDR, SPAN_IN_USE, Heap


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
    with pytest.raises(ValueError, match="small classes"):
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


# --- the windowed searches give what a search of the whole heap gives ------------------------

def _full_find_run(page_free: np.ndarray, backed: np.ndarray, lo: int, n: int) -> int:
    """The search of the whole rest of the heap (the reference)."""
    from sweeperd.runtime.runs import first_run

    free = page_free[lo:]
    if not free.any():
        return -1
    lo += int(np.argmax(free))
    for mask in (page_free[lo:] & backed[lo:], page_free[lo:]):
        start = first_run(mask, n)
        if start >= 0:
            return lo + start
    return -1


def _full_carve(mask: np.ndarray, n: int, npages: int) -> list[int]:
    """Spans of ``npages`` cut from each run of ``mask`` from its start, page by page."""
    out, i = [], 0
    while i + npages <= mask.size and len(out) < n:
        if mask[i : i + npages].all():
            out.append(i)
            i += npages
        else:
            i += int(np.argmin(mask[i : i + npages])) + 1
    return out


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.floats(0, 1), st.floats(0, 1), st.integers(1, 300),
       st.integers(1, 16), st.sampled_from([1, 3, 8, 64]), st.floats(0, 1))
def test_windowed_searches_find_what_the_whole_heap_search_finds(heap, seed, p_free, p_backed,
                                                                 run, n, window, at):
    """Masks of runs (lengths up to ``run`` pages) free with ``p_free``, backed with
    ``p_backed``; a search from ``at`` of the heap, in windows of ``window`` pages."""
    npg = heap.npages
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, run + 1, npg)
    free = np.repeat(rng.random(npg) < p_free, lens)[:npg]
    backed = np.repeat(rng.random(npg) < p_backed, rng.integers(1, run + 1, npg))[:npg]
    lo = min(npg, int(at * (npg + 1)))
    heap.page_span[:] = np.where(free, -1, 0)
    heap.scavenged[:] = ~backed
    old = mheap.SEARCH_WINDOW
    mheap.SEARCH_WINDOW = window
    try:
        heap.header[H_SEARCH_ADDR] = lo
        assert mheap.find_run(heap, n) == _full_find_run(free, backed, lo, n)
        for want in (True, False):
            m = free[lo:] & (backed[lo:] == want)
            got = mheap._first_free(heap, lo, n, backed=want)
            assert got.tolist() == np.flatnonzero(m)[:n].tolist()
        for npages in (2, 3, 5):  # spans carved from runs, whole heap vs windows
            taken = mheap._carve(heap, lo, n, npages, backed=True)
            assert taken.tolist() == _full_carve(free[lo:] & backed[lo:], n, npages)
            rest = free[lo:].copy()
            for t in taken.tolist():
                rest[t : t + npages] = False
            got = mheap._carve(heap, lo, n, npages, backed=False, taken=taken)
            assert got.tolist() == _full_carve(rest, n, npages)
    finally:
        mheap.SEARCH_WINDOW = old
        heap.page_span[:] = -1
        heap.scavenged[:] = 1


def test_multi_page_spans_come_in_batches_of_whole_runs(heap):
    from sweeperd.runtime.sizeclasses import CLASS_NPAGES

    c = 45
    npg = int(CLASS_NPAGES[c])
    assert npg == 3
    hole, _ = mheap.alloc_span(heap, 0, 2)
    block, _ = mheap.alloc_span(heap, 0, 4)
    mheap.free_spans(heap, np.array([hole]))  # a 2-page hole low down: too small for one
    spans, nscav = mheap.alloc_spans(heap, c, 5)
    assert spans.tolist() == [block + 4 + i * npg for i in range(5)] and nscav == 5 * npg
    assert (heap.span_class[spans] == c).all() and (heap.span_npages[spans] == npg).all()
    check_heap(heap)
    every, _ = mheap.alloc_spans(heap, c, heap.npages)  # more than fit: what fits
    assert every.size == (heap.npages - int(spans[-1]) - npg) // npg
    check_heap(heap)


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "compiled"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), shuffled=st.booleans(), twice=st.booleans())
def test_free_spans_compiled_and_numpy_agree(compiled, seed, shuffled, twice):
    """Spans of 1..5 pages freed in any order, some twice: both engines leave the same page
    map, span table, running counters and tallies (the compiled one takes the ascending
    all-in-use case and hands the rest back)."""
    from sweeperd.runtime import kernels

    from .conftest import not_here

    if compiled and not kernels.enabled():
        not_here(f"no compiled kernels: {kernels.unavailable()}")
    snaps = []
    for engine in (False, compiled):
        with Heap.create(4 << 20) as heap:
            rng = np.random.default_rng(seed)
            spans = np.array([mheap.alloc_span(heap, 0, int(rng.integers(1, 6)))[0]
                              for _ in range(60)])
            free = spans[rng.random(spans.size) < 0.6]
            if shuffled:
                free = rng.permutation(free)
            if twice and free.size:
                mheap.free_spans(heap, free[: free.size // 2], compiled=engine)
            got = mheap.free_spans(heap, free, compiled=engine)
            check_heap(heap)
            snaps.append((got, heap.snapshot()))
    (g0, s0), (g1, s1) = snaps
    assert g0 == g1
    for name in s0:
        assert np.array_equal(s0[name], s1[name]), name


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), p_free=st.floats(0, 1), p_backed=st.floats(0, 1),
       npages=st.integers(1, 8), count=st.integers(0, 60), lo_frac=st.floats(0, 1))
def test_the_compiled_carve_finds_what_the_windowed_search_finds(heap, seed, p_free, p_backed,
                                                                  npages, count, lo_frac):
    """kernels.carve (one scan) and mheap's windowed numpy search take the same spans from
    the same page map: backed runs first, then any free runs less those (the alloc_spans
    order), from any search hint."""
    from sweeperd.runtime import kernels
    from sweeperd.runtime.heap import PAGE_FREE

    from .conftest import not_here

    if not kernels.enabled():
        not_here(f"no compiled kernels: {kernels.unavailable()}")
    rng = np.random.default_rng(seed)
    n = heap.npages
    saved = heap.page_span.copy(), heap.scavenged.copy()
    try:
        heap.page_span[:] = np.where(rng.random(n) < p_free, PAGE_FREE, 0)
        heap.scavenged[:] = rng.random(n) >= p_backed
        lo = int(lo_frac * n)
        for backed in (True, False):
            first = mheap._carve(heap, lo, count, npages, True, compiled=False)
            taken = None if backed else first
            want = mheap._carve(heap, lo, count, npages, backed, taken, compiled=False)
            got = mheap._carve(heap, lo, count, npages, backed, taken, compiled=True)
            assert got.tolist() == want.tolist()
    finally:
        heap.page_span[:], heap.scavenged[:] = saved
