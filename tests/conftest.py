from __future__ import annotations

import numpy as np
import pytest

from sweeperd.heap import H_SWEEPGEN, Heap
from sweeperd.sweepgen import try_claim


@pytest.fixture
def heap():
    h = Heap.create(16 << 20)  # 2048 pages
    try:
        yield h
    finally:
        h.close()


def start_cycle(heap: Heap) -> int:
    """Begin a sweep phase (sweepgen += 2), as the coordinator does after mark."""
    heap.header[H_SWEEPGEN] += 2
    return heap.sweepgen


def claim_all(heap: Heap) -> np.ndarray:
    return try_claim(heap.span_sweepgen, heap.in_use_spans(), heap.sweepgen)
