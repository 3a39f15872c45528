"""Scavenger pacing: how much to keep (the retain goal) and how fast to release (CPU budget).

Theory of operation
-------------------
**Retain goal** (Go's gcPaceScavenger): keep the heap's backed memory at most the heap goal
plus ``RETAIN_EXTRA_PERCENT`` (10%); with a memory limit, also at most 95% of it.  The
scavenger works only while the heap's *true* backing — the kernel's count of the arena's
blocks — is above the goal.

**CPU budget** (Go's scavengerState.sleep): the scavenger works at least ``min_work`` (1 ms)
per wake, then sleeps ``worked / sleep_ratio``.  Here a wake does ``wake_work`` (20 ms),
twenty of Go's wakes at once, because a Python wake costs about 0.5 ms of its own (the heap
lock's round trip, the search, the books): at 1 ms a wake, paced release cost 1.9x the
kernel's one call for the same memory (``bench scavenge --live 0.1``).  The controller
still sees Go's stream: :meth:`Pacer.observe` feeds it each wake as one of Go's, with Go's
period (the wake's period over the ``min_work`` wakes it holds), so each step has the gain Go
tuned for 1 ms wakes.

A PI controller (Go's gains: kp 0.3375, ti 3.2 ms, tt 1 s, output clamped to [0.001, 1000])
moves ``sleep_ratio`` so that the measured fraction ``worked / ((worked + slept) * ncpu)``
converges to the target (Go: 1% of the machine).  Go starts the ratio at 0.001 and lets the
controller raise it; with twenty of Go's wakes in one, that start would sleep 20 s after the
first wake, so the ratio starts where the target puts it (``f·ncpu / (1 − f·ncpu)``) and
``STARTING_SLEEP_RATIO`` is kept for the controller's breakdown.  Time enters only through
the arguments, so tests drive it with a fake clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sweeperd.runtime.sizeclasses import PAGE_SIZE

RETAIN_EXTRA_PERCENT = 10
MEMORY_LIMIT_FRACTION = 0.95
STARTING_SLEEP_RATIO = 0.001
MIN_WORK_S = 0.001
WAKE_WORK_S = 0.02  # a wake's work here: twenty of Go's (see the module's notes)
MAX_GO_WAKES = 1000  # a wake counts as at most this many of Go's


def retain_goal(heap_goal: int, memory_limit: int = 0) -> int:
    """Bytes of heap memory the scavenger lets stay backed."""
    goal = heap_goal * (100 + RETAIN_EXTRA_PERCENT) // 100
    if memory_limit > 0:
        goal = min(goal, int(memory_limit * MEMORY_LIMIT_FRACTION))
    return goal // PAGE_SIZE * PAGE_SIZE


def pages_to_release(backed_bytes: int, goal: int) -> int:
    return max(0, backed_bytes - goal) // PAGE_SIZE


def steady_ratio(fraction: float, ncpu: int) -> float:
    """The work/sleep ratio at which the scavenger uses ``fraction`` of ``ncpu`` CPUs."""
    f = min(fraction * ncpu, 0.999)
    return min(max(f / (1 - f), PIController.lo), PIController.hi)


@dataclass
class PIController:
    kp: float = 0.3375
    ti: float = 3.2e-3  # seconds
    tt: float = 1.0  # seconds: anti-windup reset time
    lo: float = 0.001
    hi: float = 1000.0
    err_integral: float = 0.0

    def next(self, value: float, setpoint: float, period: float) -> tuple[float, bool]:
        prop = self.kp * (setpoint - value)
        raw = prop + self.err_integral
        out = min(max(raw, self.lo), self.hi)
        if self.ti and self.tt:
            self.err_integral += (self.kp * period / self.ti) * (setpoint - value) + (
                period / self.tt) * (out - raw)
        if not math.isfinite(self.err_integral) or not math.isfinite(out):
            self.err_integral = 0.0
            return out, False
        return out, True


@dataclass
class Pacer:
    fraction: float = 0.01
    ncpu: int = 1
    min_work: float = MIN_WORK_S
    wake_work: float = WAKE_WORK_S
    sleep_ratio: float = -1.0  # -1: where the target puts it (steady_ratio)
    controller: PIController = field(default_factory=PIController)
    cooldown: float = 0.0

    def __post_init__(self) -> None:
        if self.sleep_ratio < 0:  # and the controller's integral with it (its output)
            self.sleep_ratio = steady_ratio(self.fraction, self.ncpu)
            self.controller.err_integral = self.sleep_ratio

    def sleep_for(self, worked: float) -> float:
        """Seconds to sleep after ``worked`` seconds of scavenging."""
        return max(worked, self.min_work) / self.sleep_ratio

    def observe(self, worked: float, slept: float) -> float:
        """Feed back one wake; returns the CPU fraction it measured.  The controller sees it
        as one of Go's wakes (its period divided by the ``min_work`` wakes it holds), so each
        step has the gain Go tuned; a 1 s period would make its integral step 100x too big."""
        worked = max(worked, self.min_work)
        frac = worked / ((slept + worked) * self.ncpu)
        if self.cooldown > 0:
            self.cooldown -= slept + worked
            return frac
        k = max(1, min(MAX_GO_WAKES, int(worked / self.min_work)))
        self.sleep_ratio, ok = self.controller.next(frac, self.fraction, (slept + worked) / k)
        if not ok:  # the proportional response broke down: sleep conservatively for a while
            self.sleep_ratio = STARTING_SLEEP_RATIO
            self.cooldown = 5.0
        return frac
