"""The mark scatter: batched (bounded memory) equals one scatter; bad input fails by name."""

import numpy as np
import pytest

from sweeperd.bench.common import fill_heap
from sweeperd.errors import BadObjectIndex, BadSpanState
from sweeperd.runtime import mark


def test_batched_mark_equals_one_scatter(heap, monkeypatch):
    spans = fill_heap(heap, 6, 300, touch=False)
    rng = np.random.default_rng(3)
    s = rng.choice(spans, 5000)
    i = rng.integers(0, 128, 5000)
    before = heap.bits.copy()
    mark.mark_objects(heap, s, i)
    one = heap.bits.copy()
    heap.bits[...] = before
    monkeypatch.setattr(mark, "MARK_BATCH", 7)  # 715 batches, duplicates across them
    mark.mark_objects(heap, s, i)
    assert np.array_equal(heap.bits, one) and not np.array_equal(one, before)


def test_marking_a_free_span_or_past_nelems_fails_by_name(heap):
    spans = fill_heap(heap, 6, 2, touch=False)
    with pytest.raises(BadObjectIndex, match="object 128"):
        mark.mark_objects(heap, spans[:1], [128])
    with pytest.raises(BadSpanState, match="not in use"):
        mark.mark_objects(heap, [int(spans[-1]) + 1], [0])
