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


class _SimKernel:
    """The kernel seam of SysMem: each madvise costs simulated time in proportion to its
    length (``rate`` bytes a second) and a fixed per-call cost, on the shared fake clock."""

    def __init__(self, clock: list[float], rate: float, per_call: float = 2e-6) -> None:
        self.clock, self.rate, self.per_call = clock, rate, per_call
        self.released = 0

    def madvise(self, addr: int, length: int, advice: int) -> None:
        self.clock[0] += self.per_call + length / self.rate
        self.released += length


def test_the_real_wake_reaches_the_retain_goal_and_holds_it_on_budget():
    """``Scavenger.wake`` itself (not a stand-in loop) over a real heap, with a fake clock,
    a simulated kernel cost and a simulated backing: it releases down to the retain goal,
    holds it while the mutator re-backs pages, spends the CPU fraction it was given, and
    reaches the goal in about the time that budget allows."""
    from sweeperd.pacing.bgscavenge import Scavenger
    from sweeperd.runtime import mheap
    from sweeperd.runtime.heap import H_HEAP_GOAL, Heap
    from sweeperd.sys.sysmem import SysMem

    clock = [0.0]
    fraction, rate = 0.05, 1e8  # 5% of one CPU; a slow kernel: 100 MB/s
    with Heap.create(128 << 20) as heap:
        npages = 12_000
        spans = [mheap.alloc_span(heap, 0, 100)[0] for _ in range(npages // 100)]
        mheap.free_spans(heap, np.array(spans))  # 12,000 free pages, backed
        heap.header[H_HEAP_GOAL] = 2000 * PAGE_SIZE
        goal = retain_goal(2000 * PAGE_SIZE)
        kernel = _SimKernel(clock, rate)
        rebacked = [0]

        def backed() -> int:
            return npages * PAGE_SIZE - kernel.released + rebacked[0]

        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True,
                    kernel=kernel)  # type: ignore[arg-type]
        sc = Scavenger(heap, sm, Pacer(fraction=fraction, ncpu=1), clock=lambda: clock[0],
                       backed=backed)
        worked_total, reached = 0.0, None
        worked_to_goal = released_to_goal = 0.0
        while clock[0] < 120:
            pages, worked = sc.wake()
            worked_total += worked
            if pages:
                sleep = sc.pacer.sleep_for(worked)
                clock[0] += sleep
                sc.pacer.observe(worked, sleep)
            else:
                clock[0] += 0.01
            if reached is None and backed() <= goal:
                reached, worked_to_goal, released_to_goal = clock[0], worked_total, kernel.released
            if reached is not None:
                assert backed() <= goal + PAGE_SIZE * 64  # held, within one small quantum
                if clock[0] - reached < 5:
                    rebacked[0] += PAGE_SIZE  # the mutator touches a free page now and then
        assert reached is not None
        released = kernel.released
        assert abs(released - (npages * PAGE_SIZE + rebacked[0] - goal)) <= PAGE_SIZE * 64
        # the budget: CPU spent over the time it took, against the fraction it was given
        assert worked_to_goal / reached == pytest.approx(fraction, rel=0.1)
        ideal = released_to_goal / rate / fraction  # the kernel's cost, stretched to the budget
        assert ideal <= reached <= 1.2 * ideal + 0.5
        assert sc.released.pages * PAGE_SIZE == released  # its books say what it did
