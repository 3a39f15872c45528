"""The vectorized batch sweep is the one-by-one sweep: same bitmaps, counters, sets, freed
spans and queued finalizers, on random heaps; with the compiled kernels (kernels.py) and
without them (the numpy engine, their reference)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeperd.runtime import kernels
from sweeperd.runtime import sweep as sweep_mod
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import SPAN_DEAD, SWEEP_BATCH, T_OBJECTS_FREED, T_SWEPT_SPANS, Heap
from sweeperd.runtime.specials import finq_entries
from sweeperd.runtime.sweep import SweepStats, sweep, sweep_batch

from .conftest import claim_all, not_here
from .heapgen import build

ENGINES = [pytest.param(False, id="numpy"), pytest.param(True, id="compiled")]


def _engine(compiled: bool) -> None:
    if compiled and not kernels.enabled():
        not_here(f"no compiled kernels: {kernels.unavailable()}")


@pytest.mark.parametrize("compiled", ENGINES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), nspans=st.integers(1, 60),
       preserve=st.booleans(), split=st.integers(1, 4), p_fin=st.sampled_from([0.0, 0.05]))
def test_batch_equals_one_by_one(compiled, seed, nspans, preserve, split, p_fin):
    """(Heaps without finalizers are the compiled loops' plain case; with them, the batches
    holding a finalizer fall back to the numpy engine.)"""
    _engine(compiled)
    rng = np.random.default_rng(seed)
    with Heap.create(4 << 20) as heap:
        build(heap, rng, nspans, p_fin=p_fin)
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
            r = sweep_batch(heap, chunk, preserve=preserve, compiled=compiled)
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


def test_the_compiled_sweep_takes_the_plain_case_and_hands_back_the_rest():
    """A batch of plain spans is swept by the kernels (not handed back); one in an unsorted
    order, or holding a finalizer, is handed back to the numpy engine with nothing written."""
    _engine(True)
    rng = np.random.default_rng(7)
    with Heap.create(4 << 20) as heap:
        build(heap, rng, 40, p_fin=0.0)
        claimed = claim_all(heap)
        before = heap.snapshot()
        assert sweep_mod._sweep_compiled(heap, claimed[::-1].copy(), False, True) is None
        live = claimed[heap.span_alloc_count[claimed] > 0]
        heap.span_specials[live[0]] = 1  # (a flag alone: the kernel must not look further)
        assert sweep_mod._sweep_compiled(heap, claimed, False, True) is None
        heap.span_specials[live[0]] = 0
        after = heap.snapshot()
        assert all(np.array_equal(after[k], before[k]) for k in before if k != "span_specials")
        assert sweep_mod._sweep_compiled(heap, claimed, False, True) is not None
        check_heap(heap)
