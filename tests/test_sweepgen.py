import numpy as np
import pytest

from sweeperd.errors import BadSpanState
from sweeperd.runtime import sweepgen as sg


def test_states_relative_to_heap():
    h = 10
    assert sg.state_of(8, h) == sg.SweepState.NEEDS_SWEEP
    assert sg.state_of(9, h) == sg.SweepState.SWEEPING
    assert sg.state_of(10, h) == sg.SweepState.SWEPT
    assert sg.state_of(11, h) == sg.SweepState.CACHED_UNSWEPT
    assert sg.state_of(13, h) == sg.SweepState.CACHED_SWEPT
    with pytest.raises(BadSpanState):
        sg.state_of(12, h)
    with pytest.raises(BadSpanState):
        sg.state_of(4, h)


def test_wraps_modulo_2_32():
    h = 1
    assert sg.state_of(sg.M32, h) == sg.SweepState.NEEDS_SWEEP
    assert sg.at(h, sg.SweepState.NEEDS_SWEEP) == sg.M32


def test_claim_is_exactly_once():
    arr = np.array([8, 8, 10, 9, 8, 11], dtype=np.uint32)
    mine = sg.try_claim(arr, np.arange(6), 10)
    assert mine.tolist() == [0, 1, 4]
    assert sg.try_claim(arr, np.arange(6), 10).size == 0  # the loser gets nothing
    assert arr.tolist() == [9, 9, 10, 9, 9, 11]
    run = np.full(4, 8, dtype=np.uint32)
    assert sg.try_claim(run, np.arange(4), 10).tolist() == [0, 1, 2, 3]  # the slice path


def test_cache_and_uncache():
    arr = np.array([10, 10], dtype=np.uint32)
    sg.cache(arr, 0, 10)
    assert arr[0] == 13
    assert sg.uncache(arr, 0, 10) is False and arr[0] == 10
    sg.cache(arr, 1, 10)
    # a new cycle begins while span 1 is cached: it is now h+1, stale
    assert sg.state_of(int(arr[1]), 12) == sg.SweepState.CACHED_UNSWEPT
    assert sg.uncache(arr, 1, 12) is True and arr[1] == 11  # owned for sweeping
    with pytest.raises(BadSpanState, match="cannot cache"):
        sg.cache(arr, 1, 12)
    with pytest.raises(BadSpanState, match="cannot uncache"):
        sg.uncache(arr, 0, 10)
