"""Scavenger pacing with a fake clock: retain goal reached and held; CPU fraction on target."""

import numpy as np
import pytest

from sweeperd.pacing.scavpace import Pacer, pages_to_release, retain_goal
from sweeperd.runtime.sizeclasses import PAGE_SIZE


def test_retain_goal_is_heap_goal_plus_ten_percent_or_95_percent_of_the_limit():
    assert retain_goal(100 * PAGE_SIZE * 10) == 1100 * PAGE_SIZE
    assert retain_goal(1000 * PAGE_SIZE, memory_limit=1000 * PAGE_SIZE) == 950 * PAGE_SIZE
    assert pages_to_release(2000 * PAGE_SIZE, 1100 * PAGE_SIZE) == 900
    assert pages_to_release(1000 * PAGE_SIZE, 1100 * PAGE_SIZE) == 0


@pytest.mark.parametrize("target,ncpu", [(0.01, 1), (0.01, 2), (0.05, 1), (0.02, 4)])
def test_cpu_fraction_converges_within_half_a_point(target, ncpu):
    rng = np.random.default_rng(1)
    p = Pacer(fraction=target, ncpu=ncpu)
    worked_total = wall_total = 0.0
    for i in range(3000):
        worked = float(rng.uniform(0.001, 0.004))  # the fake clock: work takes 1-4 ms
        slept = p.sleep_for(worked) * float(rng.uniform(0.98, 1.05))  # timer slack
        p.observe(worked, slept)
        if i >= 1000:  # after convergence
            worked_total += max(worked, p.min_work)
            wall_total += max(worked, p.min_work) + slept
    frac = worked_total / (wall_total * ncpu)
    assert abs(frac - target) <= 0.005, f"fraction {frac:.4f} for target {target}"


def test_retain_goal_reached_and_held_with_a_fake_clock():
    """A simulated heap: backing falls by what is released each wake, the mutator re-backs
    some pages; the scavenger, paced, brings it to the goal and keeps it there."""
    goal = retain_goal(1000 * PAGE_SIZE)
    backed = 5000 * PAGE_SIZE
    p = Pacer(fraction=0.01)
    t = 0.0
    reached = None
    rate_pages_per_s = 200_000  # measured-like release speed
    for _ in range(20000):
        need = pages_to_release(backed, goal)
        if need:
            pages = min(need, int(rate_pages_per_s * p.min_work) + 1)
            worked = pages / rate_pages_per_s
            backed -= pages * PAGE_SIZE
            slept = p.sleep_for(worked)
            p.observe(worked, slept)
            t += worked + slept
        else:
            t += 0.01
            if reached is None:
                reached = t
        if reached is not None and t - reached > 1.0:
            backed += PAGE_SIZE  # the mutator touches a free page now and then
        assert backed >= goal - PAGE_SIZE * (rate_pages_per_s // 1000 + 1)
        if t > 120:
            break
    assert reached is not None and reached < 120
    assert pages_to_release(backed, goal) <= rate_pages_per_s // 1000 + 1  # held
