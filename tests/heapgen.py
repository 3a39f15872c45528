"""Random heaps for property tests: spans of random classes, random allocation, marks and
finalizers, ready for a sweep (sweepgen advanced)."""

from __future__ import annotations

import numpy as np

from sweeperd.errors import OutOfMemory
from sweeperd.runtime import malloc, mark, mheap, specials
from sweeperd.runtime.heap import Heap
from sweeperd.runtime.sizeclasses import CLASS_NPAGES

from .conftest import start_cycle

CLASSES = [1, 2, 3, 5, 6, 7, 10, 20, 30, 45, 56, 60, 66, 67]


def build(heap: Heap, rng: np.random.Generator, nspans: int, p_fin: float = 0.05) -> np.ndarray:
    spans = []
    for _ in range(nspans):
        c = int(rng.choice([*CLASSES, 0]))
        try:
            if c == 0:
                s, _ = mheap.alloc_span(heap, 0, int(rng.integers(1, 6)))
            else:
                s, _ = mheap.alloc_span(heap, c, int(CLASS_NPAGES[c]))
        except OutOfMemory:
            break
        ne = int(heap.span_nelems[s])
        k = int(rng.integers(0, ne + 1))
        idx = malloc.alloc_objects(heap, s, k)
        if idx.size:
            malloc.write_payload(heap, s, idx, seed=s)
            fin = idx[rng.random(idx.size) < p_fin]
            if fin.size:
                specials.set_finalizer(heap, s, fin)
        spans.append(s)
    spans_a = np.array(spans, dtype=np.int64)
    # liveness: per span a random fraction; some spans all dead, some all live
    ms, mi = [], []
    for s in spans_a:
        a = int(heap.alloc_buf(s))
        ne = int(heap.span_nelems[s])
        bits = np.unpackbits(heap.bits[a, :, s].copy().view(np.uint8), bitorder="little")[:ne]
        alloc = np.flatnonzero(bits)
        mode = rng.integers(0, 4)
        if mode == 0:
            live = alloc[:0]
        elif mode == 1:
            live = alloc
        else:
            live = alloc[rng.random(alloc.size) < rng.random()]
        ms.append(np.full(live.size, s))
        mi.append(live)
    if spans:
        mark.mark_objects(heap, np.concatenate(ms), np.concatenate(mi))
    start_cycle(heap)
    return spans_a
