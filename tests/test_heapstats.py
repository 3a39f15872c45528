"""The heap's classes from the running counters, against a scan; rebase after a death."""

import numpy as np

from sweeperd.roles import Role
from sweeperd.runtime import malloc, mheap, owners, scavenge
from sweeperd.runtime.heap import (
    C_CACHED_PAGES,
    C_IN_USE_PAGES,
    C_OBJECT_BYTES,
    C_OCCUPIED_PAGES,
    C_RELEASING_PAGES,
    C_SPANS_IN_USE,
    PAGE_FREE,
    SPAN_DEAD,
    Heap,
)
from sweeperd.runtime.heapstats import counter_drift, heap_stats, rebase, scan_heap_stats
from sweeperd.runtime.sizeclasses import CLASS_SIZE, PAGE_SIZE


def _busy_heap(heap: Heap) -> tuple[int, int]:
    """One span holding objects, one empty, one large object, some pages released."""
    held, _ = mheap.alloc_span(heap, 6)
    malloc.alloc_objects(heap, held, 3)
    empty, _ = mheap.alloc_span(heap, 6)
    big, _ = mheap.alloc_span(heap, 0, 9)
    malloc.alloc_objects(heap, big, 1)
    gone, _ = mheap.alloc_span(heap, 0, 4)
    mheap.free_spans(heap, np.array([gone]))  # four backed free pages; release two of them
    scavenge.finish(heap, np.array([gone]), np.array([2]))
    return held, empty


def test_every_class_from_the_counters_equals_the_scan(heap):
    _busy_heap(heap)
    hs = heap_stats(heap)
    assert hs == scan_heap_stats(heap)
    assert hs.objects_bytes == 3 * int(CLASS_SIZE[6]) + 9 * PAGE_SIZE
    assert hs.spans_in_use == 3
    assert hs.in_use_bytes == 11 * PAGE_SIZE
    assert hs.fragmentation_bytes == PAGE_SIZE - 3 * int(CLASS_SIZE[6])
    # the fresh heap's pages count as released; the freed span's are backed until released
    assert hs.released_bytes + hs.free_bytes + hs.in_use_bytes == heap.heap_bytes
    assert hs.free_bytes == 2 * PAGE_SIZE


def test_finishing_a_release_twice_counts_it_once(heap):
    """Recovery of a dead scavenger runs ``finish`` again on the same runs."""
    _busy_heap(heap)
    s, _ = mheap.alloc_span(heap, 5)
    mheap.free_spans(heap, np.array([s]))
    scavenge.finish(heap, np.array([s]), np.array([1]))
    once = heap_stats(heap)
    scavenge.finish(heap, np.array([s]), np.array([1]))
    assert heap_stats(heap) == once == scan_heap_stats(heap)


def test_rebase_puts_the_counters_back_after_a_store_lost_its_count(heap):
    held, _ = _busy_heap(heap)
    # a sweeper killed inside freeSpan, after its stores and before its count: the span's
    # objects were swept away (counted), then the span died and its pages went free
    heap.me = owners.of(Role.SWEEPER, 0)
    before = heap_stats(heap)
    malloc_bytes = 3 * int(CLASS_SIZE[6])
    heap.span_alloc_count[held] = 0
    heap.count(C_OBJECT_BYTES, -malloc_bytes)
    heap.count(C_OCCUPIED_PAGES, -1)  # its occupied page: the sweep counted that too
    heap.span_state[held] = SPAN_DEAD
    heap.page_span[held] = PAGE_FREE  # ... and died here
    drifted = heap_stats(heap)
    assert drifted != scan_heap_stats(heap)
    assert drifted.in_use_bytes == before.in_use_bytes  # the free was never counted
    heap.me = owners.COORDINATOR
    drift = rebase(heap)
    expect = np.zeros_like(drift)
    expect[[C_IN_USE_PAGES, C_SPANS_IN_USE]] = 1  # one page and one span too many in use
    assert drift.tolist() == expect.tolist()
    assert heap_stats(heap) == scan_heap_stats(heap)
    assert not counter_drift(heap).any()
    # only the rebasing process's row changed
    row = heap.counters[owners.of(Role.SWEEPER, 0)]
    assert row[C_OBJECT_BYTES] == -malloc_bytes and row[C_OCCUPIED_PAGES] == -1
    assert np.count_nonzero(row) == 2


def test_releasing_and_cached_bytes_are_running_counters_equal_to_the_scan(
        heap, monkeypatch):
    """cached_bytes and releasing_bytes come from the running counters (O(1): no table
    scan), and equal whole-table references (and the chunked rebase scan) as a mutator caches
    and flushes spans and a release takes and finishes pages."""
    from sweeperd.runtime import heapstats
    from sweeperd.runtime.heap import SPAN_IN_USE, scavenging
    from sweeperd.workload.mutator import Mutator, Workload

    def want() -> tuple[int, int]:
        h = heap.sweepgen
        spans = np.flatnonzero(heap.span_state == SPAN_IN_USE)
        sg = heap.span_sweepgen[spans]
        cached = int(heap.span_npages[spans[(sg == h + 1) | (sg == h + 3)]].sum())
        return cached * PAGE_SIZE, int(np.count_nonzero(heap.page_span <= scavenging(0))) \
            * PAGE_SIZE

    m = Mutator(heap, 0, Workload(size_classes=(2, 6, 45), alloc_rate=1000),
                rng=np.random.default_rng(4))
    for _ in range(40):
        m.step()  # the small path: one span per class stays cached
    heap.me = owners.SCAVENGER
    s, _ = mheap.alloc_span(heap, 0, 5)
    mheap.free_spans(heap, np.array([s]))
    starts, lengths = scavenge.take(heap, 5)
    cached, releasing = want()
    assert cached > 0 and len(m.mcache) == 3 and releasing == 5 * PAGE_SIZE
    assert (heapstats.cached_bytes(heap), heapstats.releasing_bytes(heap)) == (cached,
                                                                                releasing)
    b = heapstats.books(heap)
    assert (b.stats, b.cached_bytes, b.releasing_bytes) == (heapstats.heap_stats(heap), cached,
                                                            releasing)
    for chunk in (7, 64, 1 << 16):  # the rebase's scan agrees, in any chunking
        monkeypatch.setattr(heapstats, "SCAN_PAGES", chunk)
        assert not counter_drift(heap)[[C_RELEASING_PAGES, C_CACHED_PAGES]].any()
    scavenge.finish(heap, starts, lengths)
    m.flush()
    assert (heapstats.cached_bytes(heap), heapstats.releasing_bytes(heap)) == (0, 0) == want()
    assert not counter_drift(heap).any()


def test_the_books_are_one_read_of_the_counters(heap, monkeypatch):
    """books() reads the running counters once: the scrape's classes and its bytes in flight
    are one moment's, so a release finishing during a scrape cannot be counted backed by one
    figure and no longer in flight by another (the load test's books-vs-kernel gap)."""
    from sweeperd.runtime import heapstats
    from sweeperd.runtime.heap import Heap

    reads = []
    real = Heap.counter_totals
    monkeypatch.setattr(Heap, "counter_totals", lambda self: reads.append(1) or real(self))
    heap.me = owners.SCAVENGER
    s, _ = mheap.alloc_span(heap, 0, 5)
    mheap.free_spans(heap, np.array([s]))
    starts, lengths = scavenge.take(heap, 5)
    b = heapstats.books(heap)
    assert len(reads) == 1 and b.releasing_bytes == 5 * PAGE_SIZE
    scavenge.finish(heap, starts, lengths)
    after = heapstats.books(heap)
    assert after.releasing_bytes == 0
    assert after.stats.released_bytes - b.stats.released_bytes == 5 * PAGE_SIZE


def test_a_commit_in_flight_is_counted_until_the_books_count_it_backed(heap, monkeypatch):
    """Backing released pages again (init_spans's commit) is in flight while the kernel
    backs them and the books still count them released: ``committing_bytes`` covers that
    window (the load test's books-vs-kernel interval), and nothing is left in it after,
    not even when the kernel refuses.  (The kernel call is the seam.)"""
    import errno

    import pytest

    from sweeperd.errors import OutOfMemory
    from sweeperd.runtime.heapstats import books

    real = heap.arena_region.commit
    seen = []

    def commit(offsets, lengths):
        seen.append(books(heap).committing_bytes)
        real(offsets, lengths)

    monkeypatch.setattr(heap.arena_region, "commit", commit)
    _, nscav = mheap.alloc_span(heap, 0, 5)
    assert nscav == 5 and seen == [5 * PAGE_SIZE]
    assert books(heap).committing_bytes == 0

    def refuse(offsets, lengths):
        raise OSError(errno.ENOMEM, "refused")

    monkeypatch.setattr(heap.arena_region, "commit", refuse)
    with pytest.raises(OutOfMemory):
        mheap.alloc_span(heap, 0, 3)
    assert books(heap).committing_bytes == 0
    assert heap_stats(heap) == scan_heap_stats(heap)
