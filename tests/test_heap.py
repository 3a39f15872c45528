import numpy as np
import pytest

from sweeperd.bench.common import fill_heap
from sweeperd.errors import HeapCorrupt
from sweeperd.runtime import malloc, mheap
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import Heap, HeapHandle
from sweeperd.runtime.sizeclasses import PAGE_SIZE


def test_16_gib_of_address_space_touches_only_what_is_allocated():
    with Heap.create(16 << 30) as heap:
        assert heap.npages == 2 << 20
        assert heap.arena_backed_bytes() == 0
        s, _ = mheap.alloc_span(heap, 0, 128)  # one 1 MiB object
        idx = malloc.alloc_objects(heap, s, 1)
        malloc.write_payload(heap, s, idx, seed=1)
        assert heap.arena_backed_bytes() == 128 * PAGE_SIZE
        # metadata that exists is the per-page tables, not the worst-case bitmaps
        assert heap.meta_backed_bytes() < 0.001 * heap.heap_bytes


@pytest.mark.parametrize("cls", [6, 20, 60])
def test_metadata_backing_stays_under_one_percent(cls):
    with Heap.create(256 << 20) as heap:
        from sweeperd.runtime.sizeclasses import CLASS_NPAGES

        spans = fill_heap(heap, cls, heap.npages // int(CLASS_NPAGES[cls]))
        assert spans.size * int(CLASS_NPAGES[cls]) > 0.95 * heap.npages
        frac = heap.meta_backed_bytes() / heap.heap_bytes
        assert frac <= 0.01, f"class {cls}: metadata is {frac:.4%} of the heap"


def test_attach_refuses_a_region_that_is_not_a_heap():
    with Heap.create(1 << 20) as heap:
        heap.header[0] = 0  # clobber the magic
        with pytest.raises(HeapCorrupt, match="not a sweeperd heap"):
            Heap.attach(HeapHandle.from_dict(heap.handle.to_dict()))
        heap.header[0] = 0x5357_4545_5045_5244


def test_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 8192"):
        Heap.create(10_000)


def test_check_heap_catches_scavenged_in_use_page(heap):
    s, _ = mheap.alloc_span(heap, 6)
    heap.scavenged[s] = 1
    with pytest.raises(HeapCorrupt, match="in use and scavenged"):
        check_heap(heap)


def test_check_heap_catches_stray_bits(heap):
    heap.bits[0, 0, 7] = 1
    with pytest.raises(HeapCorrupt, match="not a span start"):
        check_heap(heap)


def test_check_heap_catches_alloc_count_drift(heap):
    s, _ = mheap.alloc_span(heap, 6)
    malloc.alloc_objects(heap, s, 5)
    heap.span_alloc_count[s] = 4
    with pytest.raises(HeapCorrupt, match="popcount"):
        check_heap(heap)
    np.testing.assert_equal(heap.span_alloc_count[s], 4)


def test_fragmentation_is_free_slots_in_spans_that_hold_objects_only(heap):
    from sweeperd.runtime.heapstats import heap_stats, scan_heap_stats
    from sweeperd.runtime.sizeclasses import CLASS_SIZE

    held, _ = mheap.alloc_span(heap, 6)  # 64 B objects: one allocated, 127 slots free
    malloc.alloc_objects(heap, held, 1)
    mheap.alloc_span(heap, 6)  # empty (a mutator's fresh span): unused, not stuck
    hs = heap_stats(heap)
    assert hs == scan_heap_stats(heap)
    assert hs.fragmentation_bytes == PAGE_SIZE - int(CLASS_SIZE[6])
    assert hs.unused_bytes == 2 * PAGE_SIZE - int(CLASS_SIZE[6])
