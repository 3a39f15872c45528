import numpy as np
import pytest

from sweeperd.errors import BadSpanState, FoundPointerToFreeObject, SweepIncreasedAllocCount
from sweeperd.runtime import malloc, mark, mcentral, mheap, specials
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import C_OBJECT_BYTES, C_OCCUPIED_PAGES, SPAN_DEAD, SWEEP_BATCH
from sweeperd.runtime.sweep import sweep, sweep_batch

from .conftest import claim_all, start_cycle


def _span_with(heap, cls=6, n=None, live=()):
    s, _ = mheap.alloc_span(heap, cls, None if cls else 2)
    n = heap.span_nelems[s] if n is None else n
    idx = malloc.alloc_objects(heap, s, int(n))
    malloc.write_payload(heap, s, idx, seed=7)
    if len(live):
        mark.mark_objects(heap, np.full(len(live), s), np.array(live))
    return s


@pytest.mark.parametrize("batch", [False, True])
def test_dead_span_goes_back_to_heap(heap, batch):
    s = _span_with(heap)
    start_cycle(heap)
    claim_all(heap)
    freed = sweep(heap, s) if not batch else sweep_batch(heap, np.array([s])).spans_freed == 1
    assert freed
    assert heap.span_state[s] == SPAN_DEAD and heap.page_span[s] == -1
    check_heap(heap)


@pytest.mark.parametrize("batch", [False, True])
def test_partial_and_full_go_to_swept_sets(heap, batch):
    p = _span_with(heap, live=[0, 5, 9])
    f = _span_with(heap, live=range(128))
    h = start_cycle(heap)
    claim_all(heap)
    for s in (p, f):
        if batch:
            sweep_batch(heap, np.array([s]))
        else:
            assert sweep(heap, s) is False
    assert heap.span_alloc_count[p] == 3 and heap.span_freeindex[p] == 0
    assert heap.span_set[p] == mcentral.partial_swept(h)
    assert heap.span_set[f] == mcentral.full_swept(h)
    assert heap.span_sweepgen[p] == h and heap.span_sweptgen[p] == h
    # the next allocation reuses exactly the freed slots
    got = malloc.alloc_objects(heap, p, 3)
    assert got.tolist() == [1, 2, 3]
    check_heap(heap)


def test_next_cycle_swaps_set_roles(heap):
    p = _span_with(heap, live=[1])
    h = start_cycle(heap)
    sweep_batch(heap, claim_all(heap))
    assert mcentral.members(heap, 6, mcentral.partial_swept(h)).tolist() == [p]
    h2 = start_cycle(heap)
    # untouched, the span is now in the partial-unswept set
    assert mcentral.members(heap, 6, mcentral.partial_unswept(h2)).tolist() == [p]
    assert mcentral.members(heap, 6, mcentral.partial_swept(h2)).size == 0


@pytest.mark.parametrize("batch", [False, True])
def test_finalizer_resurrects_then_frees_next_cycle(heap, batch):
    s = _span_with(heap, n=4, live=[0])
    specials.set_finalizer(heap, s, [2])
    start_cycle(heap)
    claim_all(heap)
    if batch:
        st = sweep_batch(heap, np.array([s]))
        assert st.finalizers_queued == 1 and st.objects_freed == 2
    else:
        sweep(heap, s)
    assert heap.span_alloc_count[s] == 2  # object 0 live, object 2 resurrected
    assert specials.finq_len(heap) == 1
    fs, fi = specials.run_finalizers(heap)
    assert (fs.tolist(), fi.tolist()) == ([s], [2])
    assert malloc.verify_payload(heap, s, np.array([0, 2]), seed=7).all()
    check_heap(heap)
    # next cycle: nothing marks object 2 and it has no finalizer any more: freed
    mark.mark_objects(heap, np.array([s]), np.array([0]))
    start_cycle(heap)
    claim_all(heap)
    sweep_batch(heap, np.array([s])) if batch else sweep(heap, s)
    assert heap.span_alloc_count[s] == 1
    assert specials.finq_len(heap) == 0
    check_heap(heap)


def test_marked_finalizer_object_keeps_its_finalizer(heap):
    s = _span_with(heap, n=4, live=[2])
    specials.set_finalizer(heap, s, [2])
    start_cycle(heap)
    sweep_batch(heap, claim_all(heap))
    assert specials.finq_len(heap) == 0 and heap.span_specials[s] == 1
    assert heap.fin_bits[0, s] == 1 << 2


@pytest.mark.parametrize("batch", [False, True])
def test_large_spans(heap, batch):
    dead = _span_with(heap, cls=0)
    live = _span_with(heap, cls=0, live=[0])
    h = start_cycle(heap)
    claim_all(heap)
    if batch:
        st = sweep_batch(heap, np.array([dead, live]))
        assert st.pages_freed == 2 and st.spans_freed == 1
    else:
        assert sweep(heap, dead) and not sweep(heap, live)
    assert heap.span_set[live] == mcentral.full_swept(h)
    assert (heap.page_span[dead : dead + 2] == -1).all()
    check_heap(heap)


@pytest.mark.parametrize("batch", [False, True])
def test_preserve_keeps_empty_span_out_of_heap_and_lists(heap, batch):
    s = _span_with(heap)
    start_cycle(heap)
    claim_all(heap)
    if batch:
        assert sweep_batch(heap, np.array([s]), preserve=True).spans_freed == 0
    else:
        assert sweep(heap, s, preserve=True) is False
    assert heap.span_state[s] != SPAN_DEAD and heap.span_set[s] == mcentral.SET_NONE
    assert heap.span_alloc_count[s] == 0 and heap.span_sweepgen[s] == heap.sweepgen


@pytest.mark.parametrize("batch", [False, True])
def test_sweep_increased_allocation_count(heap, batch):
    s = _span_with(heap, live=[0, 1, 2])
    heap.span_alloc_count[s] = 2  # corrupt the books
    start_cycle(heap)
    claim_all(heap)
    before = heap.snapshot()
    with pytest.raises(SweepIncreasedAllocCount, match="sweep increased allocation count"):
        sweep_batch(heap, np.array([s])) if batch else sweep(heap, s)
    for k, v in heap.snapshot().items():
        assert np.array_equal(v, before[k]), k  # a failed sweep changes nothing


@pytest.mark.parametrize("batch", [False, True])
def test_found_pointer_to_free_object(heap, batch):
    s = _span_with(heap, n=3, live=[0])
    mark.mark_objects(heap, np.array([s]), np.array([100]))  # never allocated
    start_cycle(heap)
    claim_all(heap)
    before = heap.snapshot()
    with pytest.raises(FoundPointerToFreeObject, match="found pointer to free object"):
        sweep_batch(heap, np.array([s])) if batch else sweep(heap, s)
    for k, v in heap.snapshot().items():
        assert np.array_equal(v, before[k]), k


@pytest.mark.parametrize("batch", [False, True])
def test_unclaimed_span_is_bad_state(heap, batch):
    s = _span_with(heap)
    start_cycle(heap)  # not claimed: sweepgen h-2
    with pytest.raises(BadSpanState, match="bad span state"):
        sweep_batch(heap, np.array([s])) if batch else sweep(heap, s)
    claim_all(heap)
    sweep_batch(heap, np.array([s]))
    with pytest.raises(BadSpanState):
        sweep_batch(heap, np.array([s]))  # twice in one cycle


def test_duplicate_in_batch_is_refused(heap):
    s = _span_with(heap)
    t = _span_with(heap)
    start_cycle(heap)
    claim_all(heap)
    with pytest.raises(BadSpanState, match="twice"):
        sweep_batch(heap, np.array([t, s, t]))


def test_crash_after_commit_is_finished_not_swept_again(heap):
    """A sweeper died after the commit store: the next sweeper finishes the span."""
    a = _span_with(heap, live=[0, 3])
    b = _span_with(heap)
    h = start_cycle(heap)
    claim_all(heap)
    snap = heap.snapshot()
    sweep_batch(heap, np.array([a, b]))
    done = heap.snapshot()
    heap.restore(snap)
    # replay the dead sweeper up to its commit: counters and sweptgen written, nothing after
    counted = [C_OBJECT_BYTES, C_OCCUPIED_PAGES]  # what a sweep counts before its commit
    heap.counters[:, counted] = done["counters"][:, counted]
    row = done["tallies"][heap.me]  # its batch's in-flight tally, flagged
    heap.begin_batch(SWEEP_BATCH, tuple(int(row[p]) for p in SWEEP_BATCH[1]))
    heap.span_alloc_count[[a, b]] = done["span_alloc_count"][[a, b]]
    heap.span_freeindex[[a, b]] = 0
    heap.commit_sweep([a, b], h)
    # the recovery of a claimer that had flagged its batch: applied, then finished uncounted
    heap.apply_batch(SWEEP_BATCH)
    st = sweep_batch(heap, np.array([a, b]), recover=True, count=False)
    assert st.objects_freed == 0  # nothing is swept twice
    for k, v in heap.snapshot().items():
        assert np.array_equal(v, done[k]), k


def test_crash_before_commit_is_swept_once(heap):
    s = _span_with(heap, n=6, live=[1])
    specials.set_finalizer(heap, s, [4])
    start_cycle(heap)
    claim_all(heap)
    snap = heap.snapshot()
    sweep_batch(heap, np.array([s]))
    done = heap.snapshot()
    heap.restore(snap)
    # the dead sweeper queued the finalizer and wrote allocCount, then died before the commit
    with heap.lock:
        specials.finq_push(heap, np.array([s]), np.array([4]))
    heap.counters[:, C_OBJECT_BYTES] = done["counters"][:, C_OBJECT_BYTES]  # ... its delta
    heap.span_alloc_count[s] = 2
    sweep_batch(heap, np.array([s]), recover=True)
    assert specials.finq_len(heap) == 1  # not queued twice
    for k, v in heap.snapshot().items():
        assert np.array_equal(v, done[k]), k


def test_every_object_finalizable_never_overflows_the_queue():
    """finalizer_fraction = 1 with a ring of 64: the sweep runs the oldest finalizers to make
    room instead of failing; every finalizer is queued or run exactly once."""
    from sweeperd.bench.common import fill_heap
    from sweeperd.runtime.heap import Heap

    with Heap.create(4 << 20, finq_cap=64) as heap:
        spans = fill_heap(heap, 6, 40)
        for s in spans.tolist():
            specials.set_finalizer(heap, s, np.arange(128))
        start_cycle(heap)
        mine = claim_all(heap)
        st = sweep_batch(heap, mine[:17])  # two batches: backpressure within and across them
        st.add(sweep_batch(heap, mine[17:]))
        total = 40 * 128
        assert st.finalizers_queued == total and st.finalizers_run == total - 64
        assert specials.finq_len(heap) == 64 and not heap.fin_bits.any()
        assert st.objects_freed == 0  # resurrected for their finalizers
        check_heap(heap)
        start_cycle(heap)  # nothing keeps them: the next cycle frees every one
        assert sweep_batch(heap, claim_all(heap)).objects_freed == total
        check_heap(heap)
