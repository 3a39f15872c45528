"""The mark scatter: batched (bounded memory) equals one scatter; bad input fails by name."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.bench.common import fill_heap
from sweeperd.errors import BadObjectIndex, BadSpanState
from sweeperd.runtime import mark
from sweeperd.runtime.heap import H_SWEEPGEN, Heap
from sweeperd.runtime.sizeclasses import CLASS_NPAGES
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.runtime.sweepgen import try_claim


def test_batched_mark_equals_one_scatter(heap, monkeypatch):
    spans = fill_heap(heap, 6, 300, touch=False)
    rng = np.random.default_rng(3)
    s = rng.choice(spans, 5000)
    i = rng.integers(0, 128, 5000)
    before = heap.bits.copy()
    mark.mark_objects(heap, s, i)
    one = heap.bits.copy()
    heap.bits[...] = before
    monkeypatch.setattr(mark, "MARK_BATCH", 7)  # 715 batches, duplicates across them
    mark.mark_objects(heap, s, i)
    assert np.array_equal(heap.bits, one) and not np.array_equal(one, before)


def test_marking_a_free_span_or_past_nelems_fails_by_name(heap):
    spans = fill_heap(heap, 6, 2, touch=False)
    with pytest.raises(BadObjectIndex, match="object 128"):
        mark.mark_objects(heap, spans[:1], [128])
    with pytest.raises(BadSpanState, match="not in use"):
        mark.mark_objects(heap, [int(spans[-1]) + 1], [0])


ONE_PAGE = [c for c in range(1, len(CLASS_NPAGES)) if CLASS_NPAGES[c] == 1]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(ONE_PAGE), st.integers(1, 40), st.data())
def test_marking_whole_spans_equals_marking_every_slot(c, n, data):
    """mark_whole_spans is the scalar scatter of every slot, span by span (any class, spans in
    either buffer, in any order)."""
    h = Heap.create(4 << 20)
    try:
        spans = fill_heap(h, c, n, touch=False)
        flip = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        if flip.any():  # sweep some, all live: their alloc bits move to the other buffer
            a0 = h.alloc_buf(spans)
            mark.mark_spans_fully(h, spans)
            h.header[H_SWEEPGEN] += 2
            sweep_batch(h, try_claim(h.span_sweepgen, spans[flip], h.sweepgen))
            assert (h.alloc_buf(spans[flip]) != a0[flip]).all()
        order = data.draw(st.permutations(list(range(n))))
        pick = spans[np.array(order, dtype=np.int64)]
        before = h.bits.copy()
        ne = int(h.span_nelems[spans[0]])
        mark.mark_objects(h, np.repeat(pick, ne), np.tile(np.arange(ne), n))
        scalar = h.bits.copy()
        h.bits[...] = before
        mark.mark_whole_spans(h, np.sort(pick))
        assert np.array_equal(h.bits, scalar) and not np.array_equal(scalar, before)
    finally:
        h.close()


def test_marking_a_span_whole_that_is_not_full_fails_by_name(heap):
    spans = fill_heap(heap, 6, 2, touch=False)
    heap.span_alloc_count[spans[1]] -= 1
    with pytest.raises(BadSpanState, match=f"span {spans[1]} is not a full small span"):
        mark.mark_whole_spans(heap, spans)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3000), st.integers(1, 3))
def test_a_mark_plan_applied_each_cycle_marks_what_mark_objects_marks(seed, n, cycles):
    """A plan built once and applied in later cycles — after sweeps moved some spans' mark
    buffer — sets exactly the bits mark_objects sets then."""
    h = Heap.create(4 << 20)
    try:
        rng = np.random.default_rng(seed)
        spans = fill_heap(h, 6, 40, touch=False)
        s = rng.choice(spans, n)
        i = rng.integers(0, 128, n)
        plan = mark.MarkPlan.of(h, s, i)
        assert plan.nbytes == 64 * n
        for _ in range(cycles):
            before = h.bits.copy()
            mark.mark_objects(h, s, i)
            want = h.bits.copy()
            h.bits[...] = before
            plan.apply(h)
            assert np.array_equal(h.bits, want)
            # a sweep of some spans (everything marked lives): their buffers swap, the
            # others' stay (left unswept: only the buffers matter to the mark)
            h.header[H_SWEEPGEN] += 2
            mark.mark_spans_fully(h, spans)
            part = spans[rng.random(spans.size) < 0.5]
            sweep_batch(h, try_claim(h.span_sweepgen, part, h.sweepgen))
    finally:
        h.close()


def test_a_plan_of_a_freed_span_fails_by_name(heap):
    spans = fill_heap(heap, 6, 2, touch=False)
    plan = mark.MarkPlan.of(heap, spans[:1], [0])
    from sweeperd.runtime import mheap

    heap.span_alloc_count[spans[0]] = 0
    mheap.free_spans(heap, spans[:1])
    with pytest.raises(BadSpanState, match=f"mark plan: span {spans[0]} is not in use"):
        plan.apply(heap)
