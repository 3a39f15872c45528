"""Whole-heap invariant checks (a debug mode for tests and the daemon).

:func:`check_heap` walks the span table with numpy and raises
:class:`~sweeperd.errors.HeapCorrupt` naming the first broken invariant of the heap module's
list.  It reads only, and costs a few passes over the metadata: cheap enough to run after every
step of a property test, too slow for every allocation.
"""

from __future__ import annotations

import numpy as np

from sweeperd.errors import HeapCorrupt
from sweeperd.runtime.heap import H_SEARCH_ADDR, PAGE_FREE, Heap, scavenging
from sweeperd.runtime.runs import run_pages
from sweeperd.runtime.sizeclasses import CLASS_NELEMS, CLASS_NWORDS, MAX_BITMAP_WORDS
from sweeperd.runtime.sweepgen import M32


def _popcount_cols(bits2d: np.ndarray) -> np.ndarray:
    return np.bitwise_count(bits2d).sum(axis=0, dtype=np.int64)


def check_heap(heap: Heap) -> None:
    h = heap.sweepgen
    starts = heap.in_use_spans()
    n = heap.span_npages[starts].astype(np.int64)
    if (n <= 0).any():
        raise HeapCorrupt("an in-use span has no pages")
    owner = np.full(heap.npages, -1, dtype=np.int64)
    if starts.size:
        pages = run_pages(starts, n)
        if (pages >= heap.npages).any() or np.unique(pages).size != pages.size:
            raise HeapCorrupt("in-use spans overlap or run past the end of the heap")
        owner[pages] = np.repeat(starts, n)
    # a page being scavenged is a free page
    ps = np.where(heap.page_span <= scavenging(0), PAGE_FREE, heap.page_span)
    bad = np.flatnonzero(owner != ps)
    if bad.size:
        p = int(bad[0])
        raise HeapCorrupt(f"page {p}: page_span {heap.page_span[p]} but owner is {owner[p]}")
    free = heap.page_span < 0  # free or being scavenged
    if (heap.scavenged[~free] != 0).any():
        raise HeapCorrupt(f"page {int(np.argmax(~free & (heap.scavenged != 0)))} is in use "
                          "and scavenged")
    sa = int(heap.header[H_SEARCH_ADDR])
    if (heap.page_span[:sa] == PAGE_FREE).any():
        raise HeapCorrupt(f"searchAddr {sa} is above free page {int(np.argmax(free))}")

    cls = heap.span_class[starts]
    if (heap.span_nelems[starts] != CLASS_NELEMS[cls]).any():
        raise HeapCorrupt("a span's nelems does not match its class")
    if (heap.span_alloc_count[starts] > heap.span_nelems[starts]).any():
        raise HeapCorrupt("a span's allocCount exceeds nelems")
    # Bitmap content per class: nothing at or past nelems; allocCount == popcount(alloc bits)
    # for swept spans; finalizer bits within alloc bits.
    a_of = heap.alloc_buf(starts)
    sgs = heap.span_sweepgen[starts]
    swept = (sgs == h) | (sgs == (h + 3) & M32)
    for c in np.unique(cls):
        sel = cls == c
        cols = starts[sel]
        nw = int(CLASS_NWORDS[c])
        ne = int(CLASS_NELEMS[c])
        valid = np.zeros(MAX_BITMAP_WORDS * 64, dtype=np.uint8)
        valid[:ne] = 1
        vmask = np.packbits(valid, bitorder="little").view(np.uint64)[:, None]
        for buf in (0, 1):
            slab = heap.bits[buf][:, cols]
            if (slab & ~vmask).any():
                raise HeapCorrupt(f"class {c}: a bitmap bit at or past nelems is set")
        fslab = heap.fin_bits[:, cols]
        if (fslab & ~vmask).any():
            raise HeapCorrupt(f"class {c}: a finalizer bit at or past nelems is set")
        alloc = np.where(a_of[sel] == 0, heap.bits[0][:nw][:, cols], heap.bits[1][:nw][:, cols])
        if (fslab[:nw] & ~alloc).any():
            raise HeapCorrupt(f"class {c}: a finalizer on a free object")
        pc = _popcount_cols(alloc)
        sw = swept[sel]
        mism = sw & (pc != heap.span_alloc_count[cols])
        if mism.any():
            s = int(cols[np.argmax(mism)])
            raise HeapCorrupt(f"span {s}: allocCount {heap.span_alloc_count[s]} != "
                              f"popcount(allocBits)")
    # Columns that are not in-use span starts hold no bits.
    not_start = np.ones(heap.npages, dtype=bool)
    not_start[starts] = False
    for name, arr in (("mark/alloc", heap.bits.reshape(-1, heap.npages)),
                      ("finalizer", heap.fin_bits)):
        stray = arr[:, not_start].any(axis=0)
        if stray.any():
            p = int(np.flatnonzero(not_start)[np.argmax(stray)])
            raise HeapCorrupt(f"page {p} is not a span start but has {name} bits")


# --- the daemon's per-cycle debug checks (``--debug-checks``) ---------------------------------


def sweep_counts(heap: Heap) -> tuple[np.ndarray, np.ndarray]:
    """The spans in use at the start of a sweep phase, and how often each was swept so far."""
    spans = heap.in_use_spans()
    return spans, heap.span_nsweeps[spans].copy()


def exactly_once_violations(heap: Heap, spans: np.ndarray, before: np.ndarray) -> int:
    """How many of ``spans`` (from :func:`sweep_counts`) were not swept exactly once since."""
    d = heap.span_nsweeps[spans].astype(np.int64) - before
    return int(np.count_nonzero(d != 1))


def conservation_gap(heap: Heap, allocated: int, freed: int) -> int:
    """Objects allocated minus those in the heap minus those freed: zero while nothing moves
    (between mark and sweep) and no worker died holding unreported work."""
    in_heap = int(heap.span_alloc_count[heap.in_use_spans()].sum(dtype=np.int64))
    return allocated - in_heap - freed
