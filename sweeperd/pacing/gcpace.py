"""GC pacing: when a cycle starts (the trigger), the heap goal, and the proportional sweep rate.

Theory of operation
-------------------
After a mark, the live heap ``live`` (bytes of marked objects) sets the next **heap goal**, as
GOGC does: ``goal = live * (1 + GOGC/100)``, never below ``min_goal``.  With a **memory
limit** (Go's GOMEMLIMIT, 1.19+) the goal is also at most the limit less a headroom of 3% of
it, at least 1 MiB (Go's memoryLimitHeapGoal: ``memoryLimitHeapGoalHeadroomPercent = 3``,
``memoryLimitMinHeapGoalHeadroom = 1 MiB``), and the minimum goal does not lift it back: a
live heap over that bound makes the cycles run back to back, as in Go — until the GC CPU
limiter (pacing/gclimit.py) caps the GC's CPU at 50% and lets the heap past the goal.

**GOGC off** (``gogc = "off"``, or any negative value: :data:`GOGC_OFF`, -1) leaves the memory
limit's goal alone: Go's ``gcControllerState.commit`` sets ``gcPercentHeapGoal`` to
``^uint64(0)`` when ``gcPercent < 0``, and ``heapGoalInternal`` takes the smaller of it and
``memoryLimitHeapGoal`` (mgcpacer.go, go1.19 and go1.21 alike), so the GC runs only as the heap
nears the limit; the minimum goal does not apply (Go's ``heapMinimum`` only bounds the GOGC
goal).  Without a limit GOGC off would never collect: the configuration refuses it
(daemon/config.py, workload/scenario.py); :func:`heap_goal` then keeps the whole address space
as the goal (the heap-full trigger still fires).  The **trigger** (when
the next cycle starts) is 90% of the way from ``live`` to the goal, so the cycle has room to
finish before the heap reaches it.  A cycle also starts when the heap is nearly out of pages
(less than ``FULL_HEADROOM`` of it free or released): a fixed-size arena cannot grow.

**Proportional sweep** (Go's ``sweepPagesPerByte``): mutators sweep pages in proportion to the
bytes they allocate, so that all ``in_use_pages`` are swept before the heap reaches the trigger,
finishing ``SWEEP_SLACK_BYTES`` (1 MiB) early, as Go does.

Pure functions of plain numbers: the coordinator passes the heap's figures in.
"""

from __future__ import annotations

TRIGGER_RATIO = 0.9
FULL_HEADROOM = 0.1  # start a cycle when less than this share of the heap is free or released
SWEEP_SLACK_BYTES = 1 << 20


LIMIT_HEADROOM_PERCENT = 3
LIMIT_MIN_HEADROOM_BYTES = 1 << 20
GOGC_OFF = -1  # Go's readGOGC: GOGC=off is gcPercent -1
NO_GOAL = 1 << 62  # GOGC off without a limit: no goal (Go's ^uint64(0))


def gogc_percent(v: int | str) -> int:
    """GOGC as Go's ``gcPercent``: ``"off"`` (any case) or a negative integer is
    :data:`GOGC_OFF`; an integer is itself.  Raises ValueError for any other string."""
    if isinstance(v, str):
        if v.strip().lower() != "off":
            raise ValueError(f'GOGC must be an integer or "off", got {v!r}')
        return GOGC_OFF
    return GOGC_OFF if v < 0 else v


def gogc_text(gogc: int) -> int | str:
    """GOGC as a user writes it (status, traces, summary rows): ``"off"`` or the integer."""
    return "off" if gogc < 0 else gogc


def heap_goal(live_bytes: int, gogc: int, min_goal_bytes: int, memory_limit: int = 0) -> int:
    """The heap goal in bytes after a mark that found ``live_bytes`` live (``memory_limit``
    0: none; ``gogc`` < 0: GOGC off, the limit's goal alone — :data:`NO_GOAL` without one)."""
    if gogc < 0:
        return memory_limit_goal(memory_limit) if memory_limit > 0 else NO_GOAL
    goal = max(int(live_bytes * (1 + gogc / 100)), min_goal_bytes)
    if memory_limit > 0:
        goal = min(goal, memory_limit_goal(memory_limit))
    return goal


def memory_limit_goal(memory_limit: int) -> int:
    """The heap goal a memory limit allows: the limit less its headroom."""
    headroom = max(memory_limit * LIMIT_HEADROOM_PERCENT // 100, LIMIT_MIN_HEADROOM_BYTES)
    return max(memory_limit - headroom, 0)


def trigger(live_bytes: int, goal_bytes: int) -> int:
    """Heap objects bytes at which the next cycle starts."""
    return live_bytes + int(TRIGGER_RATIO * (goal_bytes - live_bytes))


def initial_trigger(min_goal_bytes: int) -> int:
    """The trigger before any cycle has run (nothing is known to be live)."""
    return int(min_goal_bytes * TRIGGER_RATIO)


def sweep_pages_per_byte(in_use_pages: int, trigger_bytes: int, live_bytes: int) -> float:
    """Pages a mutator must sweep per byte it allocates, for the sweep to end in time."""
    runway = max(trigger_bytes - live_bytes - SWEEP_SLACK_BYTES, SWEEP_SLACK_BYTES)
    return in_use_pages / runway


def should_trigger(objects_bytes: int, headroom_bytes: int, heap_bytes: int,
                   trigger_bytes: int, limiting: bool = False) -> bool:
    """Start a cycle now?  ``headroom_bytes`` is the heap's free plus released bytes.
    ``limiting``: the GC CPU limiter is on (pacing/gclimit.py): the trigger waits, and the heap
    grows past it (Go stops mark assists), but a nearly full arena still starts a cycle."""
    return (objects_bytes >= trigger_bytes and not limiting) \
        or headroom_bytes < FULL_HEADROOM * heap_bytes
