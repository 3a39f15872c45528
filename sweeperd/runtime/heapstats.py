"""Heap-wide figures: from the running counters in O(1), or from a scan of the span table.

Names follow Go's runtime/metrics classes: objects (bytes in allocated objects), unused
(free slots inside in-use spans), free (free pages still backed), released (free pages
returned to the OS, i.e. scavenged).  ``fragmentation`` is the part of ``unused`` in spans
that also hold an object: no scavenger can release it however long it runs, since the span's
pages stay in use (Go's anchor: keep every 10th object and nothing is released); ``unused``
also counts fresh or emptied spans a mutator holds, which are not stuck.  ``marked_bytes`` is
the live heap after a mark (mark bits of in-use spans), the base of the next heap goal.

:func:`heap_stats` sums the heap's running counters (heap.py), whatever the heap's size, and is
what the trigger check, the scrape and ``status`` read.  :func:`scan_heap_stats` computes the
same figures from the span table (a few vectorized passes, about a quarter of a second at
16 GiB): the truth the counters are tested against, and what :func:`rebase` sets them back to
after a death left a store without its count.  Invariant: with nothing in flight,
``heap_stats(h) == scan_heap_stats(h)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from sweeperd.runtime.heap import (
    C_IN_USE_PAGES,
    C_OBJECT_BYTES,
    C_OCCUPIED_PAGES,
    C_SCAVENGED_PAGES,
    C_SPANS_IN_USE,
    NCOUNTERS,
    SPAN_IN_USE,
    T_COMMIT_FAILURES,
    T_FREED_PAGES,
    T_MADVISE_CALLS,
    T_RELEASE_CPU_NS,
    T_RELEASE_RUNS,
    T_RELEASED_KERNEL_BYTES,
    T_RELEASED_PAGES,
    Heap,
    scavenging,
)
from sweeperd.runtime.sizeclasses import PAGE_SIZE


@dataclass(frozen=True)
class HeapStats:
    heap_bytes: int
    in_use_bytes: int
    objects_bytes: int
    unused_bytes: int
    free_bytes: int
    released_bytes: int
    spans_in_use: int
    fragmentation_bytes: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def heap_stats(heap: Heap) -> HeapStats:
    """The heap's classes from the running counters: O(1) in the heap's size."""
    return _classes(heap, heap.counter_totals().tolist())


def _scan_counters(heap: Heap) -> np.ndarray:
    """What every running counter should sum to, from a scan of the span table."""
    spans = np.flatnonzero(heap.span_state == SPAN_IN_USE)
    count = heap.span_alloc_count[spans].astype(np.int64)
    npages = heap.span_npages[spans].astype(np.int64)
    out = np.zeros(NCOUNTERS, dtype=np.int64)
    out[C_OBJECT_BYTES] = int((count * heap.elem_sizes(spans)).sum())
    out[C_IN_USE_PAGES] = int(npages.sum())
    out[C_SPANS_IN_USE] = spans.size
    out[C_OCCUPIED_PAGES] = int(npages[count > 0].sum())
    out[C_SCAVENGED_PAGES] = int(np.count_nonzero(heap.scavenged))
    return out


def scan_heap_stats(heap: Heap) -> HeapStats:
    """The heap's classes from a scan of the span table (O(heap)): the counters' truth."""
    return _classes(heap, _scan_counters(heap).tolist())


def _classes(heap: Heap, t: list[int]) -> HeapStats:
    in_use = t[C_IN_USE_PAGES] * PAGE_SIZE
    objects = t[C_OBJECT_BYTES]
    released = t[C_SCAVENGED_PAGES] * PAGE_SIZE
    return HeapStats(heap.heap_bytes, in_use, objects, in_use - objects,
                     heap.heap_bytes - in_use - released, released, t[C_SPANS_IN_USE],
                     t[C_OCCUPIED_PAGES] * PAGE_SIZE - objects)


def counter_drift(heap: Heap) -> np.ndarray:
    """Counters minus the scan, per counter (all zero when nothing is in flight)."""
    return heap.counter_totals() - _scan_counters(heap)


def rebase(heap: Heap) -> np.ndarray:
    """Set the running counters back to the truth, through this process's own row; returns
    the drift it removed.  Only when nothing moves (no store may be between it and its
    count): the coordinator calls it at the start of a sweep after a worker died."""
    drift = counter_drift(heap)
    heap.counters[heap.me] -= drift
    return drift
SCAN_PAGES = 1 << 16  # the scrape's scans go this many pages at a time


def _scan_chunks(heap: Heap) -> Iterator[slice]:
    """The page table in slices of SCAN_PAGES.  The scrape's scans run in the metrics thread
    of a long-lived process: whole-table temporaries (16 MiB of indices at 16 GiB) would raise
    glibc's dynamic mmap threshold and stay in that thread's arena (seen: the coordinator's
    private memory +45 MiB in 200 s); chunks keep every temporary under 1 MiB."""
    for lo in range(0, heap.npages, SCAN_PAGES):
        yield slice(lo, min(lo + SCAN_PAGES, heap.npages))


def releasing_bytes(heap: Heap) -> int:
    """Bytes of free pages a releaser has taken and not yet finished (madvise in flight): the
    books count them backed until the release finishes.  A scan of the page table (about a
    millisecond per GiB of heap, no lock: a racy count of a moving figure)."""
    top = scavenging(0)
    return sum(int(np.count_nonzero(heap.page_span[c] <= top))
               for c in _scan_chunks(heap)) * PAGE_SIZE


def cached_bytes(heap: Heap) -> int:
    """Bytes of the spans mutators hold in their mcaches (sweepgen h+1 or h+3): in use by the
    books, but a mutator may not have touched all of their pages yet.  A racy scan of the
    span table, like :func:`releasing_bytes`."""
    h = heap.sweepgen
    pages = 0
    for c in _scan_chunks(heap):
        sg = heap.span_sweepgen[c]
        held = (heap.span_state[c] == SPAN_IN_USE) & ((sg == h + 1) | (sg == h + 3))
        pages += int(heap.span_npages[c][held].sum())
    return pages * PAGE_SIZE


def marked_bytes(heap: Heap) -> int:
    """Bytes of marked objects in in-use spans (call between mark and the sweepgen bump)."""
    spans = np.flatnonzero(heap.span_state == SPAN_IN_USE)
    if spans.size == 0:
        return 0
    total = 0
    for abuf, cols in heap.by_alloc_buf(spans):
        n = np.bitwise_count(heap.bits[abuf ^ 1][:, cols]).sum(axis=0, dtype=np.int64)
        total += int((n * heap.elem_sizes(cols)).sum())
    return total


TALLY_NAMES = {T_FREED_PAGES: "freed_pages", T_RELEASED_PAGES: "released_pages",
               T_RELEASE_RUNS: "release_runs", T_RELEASED_KERNEL_BYTES: "released_kernel_bytes",
               T_MADVISE_CALLS: "madvise_calls", T_RELEASE_CPU_NS: "release_cpu_ns",
               T_COMMIT_FAILURES: "commit_failures"}


def tally_totals(heap: Heap) -> dict[str, int]:
    """The heap's tallies summed over every claimer (O(1) in the heap's size): pages freed
    to the page heap, and what the freers released themselves (the ``eager`` policy)."""
    t = heap.tallies.sum(axis=0).tolist()
    return {name: int(t[col]) for col, name in TALLY_NAMES.items()}
