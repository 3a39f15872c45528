"""Heap-wide figures, computed from the shared span table in a few vectorized passes.

Names follow Go's runtime/metrics classes: objects (bytes in allocated objects), unused
(free slots inside in-use spans), free (free pages still backed), released (free pages
returned to the OS, i.e. scavenged).  ``fragmentation`` is the part of ``unused`` in spans
that also hold an object: no scavenger can release it however long it runs, since the span's
pages stay in use (Go's anchor: keep every 10th object and nothing is released); ``unused``
also counts fresh or emptied spans a mutator holds, which are not stuck.  ``marked_bytes`` is
the live heap after a mark (mark bits of in-use spans), the base of the next heap goal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sweeperd.runtime.heap import SPAN_IN_USE, Heap
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
    spans = np.flatnonzero(heap.span_state == SPAN_IN_USE)
    size = heap.elem_sizes(spans)
    count = heap.span_alloc_count[spans].astype(np.int64)
    span_bytes = heap.span_npages[spans].astype(np.int64) * PAGE_SIZE
    objects = int((count * size).sum())
    in_use = int(span_bytes.sum())
    occupied = count > 0
    frag = int((span_bytes[occupied] - count[occupied] * size[occupied]).sum())
    free = heap.page_span < 0
    released = int(np.count_nonzero(free & (heap.scavenged != 0))) * PAGE_SIZE
    free_bytes = int(np.count_nonzero(free)) * PAGE_SIZE - released
    return HeapStats(heap.heap_bytes, in_use, objects, in_use - objects, free_bytes, released,
                     int(spans.size), frag)


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
