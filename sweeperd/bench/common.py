"""What the benchmarks share: building a filled heap, marking a prefix live, the memcpy
baseline, and dropping what a previous round kept."""

from __future__ import annotations

import time

import numpy as np

from sweeperd.runtime import mark, mheap
from sweeperd.runtime.heap import H_SWEEPGEN, Heap
from sweeperd.runtime.malloc import alloc_all
from sweeperd.runtime.sizeclasses import CLASS_NPAGES, PAGE_SIZE
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.runtime.sweepgen import try_claim


def fill_heap(heap: Heap, sizeclass: int, nspans: int, touch: bool = True) -> np.ndarray:
    """Allocate ``nspans`` spans of ``sizeclass``, every slot taken, payload pages written
    (unless ``touch`` is false: a later round of a benchmark whose pages already hold bytes)."""
    if CLASS_NPAGES[sizeclass] == 1:
        spans, _ = mheap.alloc_spans(heap, sizeclass, nspans)
    else:
        spans = np.array([mheap.alloc_span(heap, sizeclass)[0] for _ in range(nspans)])
    if spans.size < nspans:
        raise ValueError(f"heap holds only {spans.size} spans of class {sizeclass}")
    alloc_all(heap, spans)
    npg = int(CLASS_NPAGES[sizeclass])
    for s in range(0, spans.size if touch else 0, 4096):  # payload pages, a chunk at a time
        chunk = spans[s : s + 4096]
        lo, hi = int(chunk[0]) * PAGE_SIZE, (int(chunk[-1]) + npg) * PAGE_SIZE
        heap.arena[lo:hi] = 0xA5
    return spans


def mark_prefix(heap: Heap, spans: np.ndarray, live: float) -> int:
    """Mark the first ``live`` fraction of all objects of ``spans`` (address order)."""
    ne = heap.span_nelems[spans].astype(np.int64)
    total = int(ne.sum())
    nlive = round(live * total)
    if nlive == 0:
        return 0
    cum = np.cumsum(ne)
    nfull = int(np.searchsorted(cum, nlive, side="right"))
    mark.mark_spans_fully(heap, spans[:nfull])
    rest = nlive - (int(cum[nfull - 1]) if nfull else 0)
    if rest:
        mark.mark_objects(heap, np.full(rest, spans[nfull]), np.arange(rest))
    return nlive


def memcpy_bytes_per_s(nbytes: int, repeat: int = 5) -> float:
    src = np.ones(max(nbytes, 4096) // 8, dtype=np.uint64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm both buffers
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return src.nbytes / best


def reset(heap: Heap) -> None:
    """Free whatever the last round kept (one in-process sweep of everything, all dead)."""
    old = heap.in_use_spans()
    if old.size:
        heap.header[H_SWEEPGEN] += 2
        sweep_batch(heap, try_claim(heap.span_sweepgen, old, heap.sweepgen))
