import numpy as np
import pytest

from sweeperd.errors import BadSpanState
from sweeperd.runtime import malloc, mheap

from .conftest import start_cycle


def test_alloc_objects_fills_in_order_and_stops_at_nelems(heap):
    s, _ = mheap.alloc_span(heap, 6)
    a = malloc.alloc_objects(heap, s, 100)
    b = malloc.alloc_objects(heap, s, 100)
    assert a.tolist() == list(range(100)) and b.tolist() == list(range(100, 128))
    assert malloc.alloc_objects(heap, s, 1).size == 0
    assert heap.span_alloc_count[s] == 128 and heap.span_freeindex[s] == 128


def test_payload_is_really_written(heap):
    before = heap.arena_backed_bytes()
    s, _ = mheap.alloc_span(heap, 0, 3)  # committed at allocation (mheap.commit)
    idx = malloc.alloc_objects(heap, s, 1)
    malloc.write_payload(heap, s, idx, seed=42)
    assert heap.arena_backed_bytes() - before == 3 * 8192
    assert malloc.verify_payload(heap, s, idx, seed=42).all()
    assert not malloc.verify_payload(heap, s, idx, seed=43).any()


def test_alloc_from_unswept_span_is_refused(heap):
    s, _ = mheap.alloc_span(heap, 6)
    start_cycle(heap)
    with pytest.raises(BadSpanState, match="sweep it first"):
        malloc.alloc_objects(heap, s, 1)


def test_alloc_all(heap):
    spans, _ = mheap.alloc_spans(heap, 1, 4)
    assert malloc.alloc_all(heap, spans) == 4 * 1024
    assert (heap.span_alloc_count[spans] == 1024).all()
    assert malloc.alloc_objects(heap, int(spans[0]), 1).size == 0
    np.testing.assert_array_equal(heap.bits[int(heap.alloc_buf(int(spans[0]))), :16, spans],
                                  np.uint64(2**64 - 1))


def test_repair_alloc_counts_after_a_death_between_bits_and_count(heap):
    s, _ = mheap.alloc_span(heap, 6)
    malloc.alloc_objects(heap, s, 10)
    heap.span_alloc_count[s] = 7  # killed after the bits, before the count
    assert malloc.repair_alloc_counts(heap, np.array([s])) == 1
    assert heap.span_alloc_count[s] == 10
    assert malloc.alloc_objects(heap, s, 2).tolist() == [10, 11]
    assert malloc.repair_alloc_counts(heap, np.array([s])) == 0
