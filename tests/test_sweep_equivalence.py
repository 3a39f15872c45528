"""The vectorized batch sweep is the one-by-one sweep: same bitmaps, counters, sets, freed
spans and queued finalizers, on random heaps."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import SPAN_DEAD, SWEEP_BATCH, T_OBJECTS_FREED, T_SWEPT_SPANS, Heap
from sweeperd.runtime.specials import finq_entries
from sweeperd.runtime.sweep import SweepStats, sweep, sweep_batch

from .conftest import claim_all
from .heapgen import build


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), nspans=st.integers(1, 60),
       preserve=st.booleans(), split=st.integers(1, 4))
def test_batch_equals_one_by_one(seed, nspans, preserve, split):
    rng = np.random.default_rng(seed)
    with Heap.create(4 << 20) as heap:
        build(heap, rng, nspans)
        claimed = claim_all(heap)
        start = heap.snapshot()

        order = rng.permutation(claimed)
        freed_one = sorted(int(s) for s in order if sweep(heap, int(s), preserve=preserve))
        one = heap.snapshot()
        q_one = np.sort(finq_entries(heap))
        if not preserve:
            check_heap(heap)

        heap.restore(start)
        nfreed = 0
        total = SweepStats()
        for chunk in np.array_split(rng.permutation(claimed), split):
            r = sweep_batch(heap, chunk, preserve=preserve)
            nfreed += r.spans_freed
            total.add(r)
        freed_batch = [int(s) for s in claimed if heap.span_state[s] == SPAN_DEAD]
        assert nfreed == len(freed_batch)
        q_batch = np.sort(finq_entries(heap))
        assert sorted(freed_batch) == freed_one
        assert np.array_equal(q_batch, q_one)
        for name, arr in heap.snapshot().items():
            if name == "finq":
                continue  # same entries, compared above in order-free form
            if name == "tallies":  # the batch tallies its sweeps (the scalar reference not)
                row = arr[heap.me]
                assert (row[T_SWEPT_SPANS], row[T_OBJECTS_FREED]) == (total.spans,
                                                                      total.objects_freed)
                arr, ref = arr.copy(), one[name].copy()
                sweep_cols = [*SWEEP_BATCH[0], *SWEEP_BATCH[1], SWEEP_BATCH[2]]
                arr[:, sweep_cols] = ref[:, sweep_cols] = 0
                assert np.array_equal(arr, ref), name
                continue
            assert np.array_equal(arr, one[name]), name
