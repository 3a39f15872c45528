"""Committing a span's unbacked pages at allocation (mheap.commit): the kernel backs them with
one fallocate per run, and past the heap's commit limit the allocation is refused with
OutOfMemory (the mutators' out-of-memory wait), tallied, and nothing of the heap changes."""

from __future__ import annotations

import numpy as np
import pytest

from sweeperd.errors import OutOfMemory
from sweeperd.runtime import mheap
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import H_COMMIT_LIMIT, T_COMMIT_FAILURES
from sweeperd.runtime.heapstats import read_tallies
from sweeperd.runtime.sizeclasses import PAGE_SIZE


def _state(heap):
    """Copies of the heap's metadata, but the tallies (a refusal is counted there)."""
    return {name: np.array(arr, copy=True) for name, arr in heap.metadata_arrays()
            if name != "tallies"}


def test_a_fresh_span_is_backed_at_allocation_in_one_call(heap):
    assert heap.arena_backed_bytes() == 0
    s, nscav = mheap.alloc_span(heap, 0, 10)
    assert nscav == 10
    assert heap.arena_backed_bytes() == 10 * PAGE_SIZE
    assert heap.arena_region.backed_in([s * PAGE_SIZE], [10 * PAGE_SIZE]) == 10 * PAGE_SIZE


def test_a_backed_free_page_is_reused_without_a_commit(heap):
    s, _ = mheap.alloc_span(heap, 0, 4)
    mheap.free_spans(heap, np.array([s]))
    heap.header[H_COMMIT_LIMIT] = 4 * PAGE_SIZE  # full: only backed pages may be taken
    t, nscav = mheap.alloc_span(heap, 0, 4)
    assert (t, nscav) == (s, 0)
    assert read_tallies(heap).commit_failures == 0


def test_past_the_commit_limit_allocation_is_refused_tallied_and_changes_nothing(heap):
    heap.header[H_COMMIT_LIMIT] = 8 * PAGE_SIZE
    mheap.alloc_span(heap, 0, 6)
    mheap.find_run(heap, 1)  # (tightens the search hint, which a refusal may also do)
    before = _state(heap)
    with pytest.raises(OutOfMemory, match="commit limit"):
        mheap.alloc_span(heap, 0, 3)  # 6 + 3 > 8
    assert heap.tallies[heap.me, T_COMMIT_FAILURES] == 1
    after = _state(heap)
    for name, arr in before.items():
        assert np.array_equal(arr, after[name]), name
    del before, after
    assert heap.arena_backed_bytes() == 6 * PAGE_SIZE
    mheap.alloc_span(heap, 0, 2)  # what fits still goes
    assert heap.arena_backed_bytes() == 8 * PAGE_SIZE
    check_heap(heap)


def test_a_batch_of_one_page_spans_stops_at_the_commit_limit(heap):
    heap.header[H_COMMIT_LIMIT] = 50 * PAGE_SIZE
    starts, nscav = mheap.alloc_spans(heap, 6, 64)
    assert starts.size == nscav == 50
    assert heap.arena_backed_bytes() == 50 * PAGE_SIZE
    more, _ = mheap.alloc_spans(heap, 6, 64)
    assert more.size == 0
    check_heap(heap)


def test_no_commit_limit_means_only_the_heap_bounds_it(heap):
    starts, nscav = mheap.alloc_spans(heap, 6, heap.npages)
    assert starts.size == nscav == heap.npages
    assert heap.arena_backed_bytes() == heap.heap_bytes
