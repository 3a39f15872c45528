"""GC pacing: goal, trigger, proportional sweep rate (pure functions)."""

from hypothesis import given
from hypothesis import strategies as st

from sweeperd.pacing import gcpace


def test_goal_is_gogc_above_live_and_never_below_the_minimum():
    assert gcpace.heap_goal(100 << 20, 100, 4 << 20) == 200 << 20
    assert gcpace.heap_goal(100 << 20, 50, 4 << 20) == 150 << 20
    assert gcpace.heap_goal(0, 100, 4 << 20) == 4 << 20


@given(live=st.integers(0, 1 << 40), gogc=st.integers(10, 1000),
       min_goal=st.integers(1, 1 << 34))
def test_trigger_lies_between_live_and_goal(live, gogc, min_goal):
    goal = gcpace.heap_goal(live, gogc, min_goal)
    trig = gcpace.trigger(live, goal)
    assert live <= trig <= goal


def test_sweep_rate_finishes_before_the_trigger_with_a_mebibyte_to_spare():
    pages = 1000
    rate = gcpace.sweep_pages_per_byte(pages, trigger_bytes=101 << 20, live_bytes=0)
    assert rate * (100 << 20) == pages  # all pages swept 1 MiB before the trigger
    assert gcpace.sweep_pages_per_byte(pages, 0, 0) == pages / (1 << 20)  # never divide by 0


def test_a_nearly_full_heap_triggers_whatever_the_goal():
    assert gcpace.should_trigger(10, 5, 100, trigger_bytes=1 << 30)
    assert not gcpace.should_trigger(10, 50, 100, trigger_bytes=1 << 30)
    assert gcpace.should_trigger(1 << 30, 50, 100, trigger_bytes=1 << 30)


def test_a_memory_limit_caps_the_goal_less_go_s_headroom():
    """GOMEMLIMIT: goal at most limit - max(3% of it, 1 MiB), even under the minimum goal."""
    from sweeperd.pacing.gcpace import heap_goal, memory_limit_goal

    mib = 1 << 20
    assert memory_limit_goal(1000 * mib) == 1000 * mib - 30 * mib
    assert memory_limit_goal(10 * mib) == 9 * mib  # 3% is under 1 MiB: 1 MiB
    assert heap_goal(100 * mib, 100, 4 * mib) == 200 * mib  # no limit
    assert heap_goal(100 * mib, 100, 4 * mib, memory_limit=150 * mib) == 150 * mib - 4.5 * mib
    assert heap_goal(0, 100, 4 * mib, memory_limit=3 * mib) == 2 * mib  # below min_goal
    assert heap_goal(100 * mib, 100, 4 * mib, memory_limit=1 << 40) == 200 * mib  # no bind


def test_the_gc_cpu_limiter_holds_back_the_trigger_but_not_a_nearly_full_heap():
    assert not gcpace.should_trigger(1 << 30, 50, 100, trigger_bytes=1 << 20, limiting=True)
    assert gcpace.should_trigger(1 << 30, 50, 100, trigger_bytes=1 << 20, limiting=False)
    assert gcpace.should_trigger(1 << 30, 5, 100, trigger_bytes=1 << 20, limiting=True)
