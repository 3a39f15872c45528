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


@pytest.mark.parametrize("c", [1, 2, 6, 20, 45, 60])
def test_span_payloads_read_as_object_payloads_and_any_changed_word_is_caught(heap, c):
    """Filled spans written whole read as each object's own payload; a word changed anywhere
    in one object (its first, a middle one, its last) fails that object alone, both ways."""
    from sweeperd.runtime.sizeclasses import CLASS_NELEMS, CLASS_NPAGES, CLASS_SIZE

    spans, _ = mheap.alloc_spans(heap, c, 4)
    malloc.alloc_all(heap, spans)
    malloc.write_span_payloads(heap, spans, 99, int(CLASS_NPAGES[c]))
    ne, ow = int(CLASS_NELEMS[c]), int(CLASS_SIZE[c]) >> 3
    every = np.repeat(spans, ne), np.tile(np.arange(ne), spans.size)
    assert malloc.verify_payload(heap, *every, seed=99).all()
    assert malloc.verify_span_payloads(heap, spans, ne, ow, 99).all()
    assert not malloc.verify_payload(heap, *every, seed=98).any()
    k = ne // 2
    for word in sorted({0, ow // 2, ow - 1}):
        at = int(spans[2]) * 1024 + k * ow + word
        heap.arena64[at] ^= np.uint64(1 << 40)
        bad = ~malloc.verify_span_payloads(heap, spans, ne, ow, 99)
        assert bad.sum() == 1 and bad[2, k]
        one = ~malloc.verify_payload(heap, *every, seed=99)
        assert np.flatnonzero(one).tolist() == [2 * ne + k]
        heap.arena64[at] ^= np.uint64(1 << 40)
