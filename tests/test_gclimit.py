"""The GC CPU limiter (pacing/gclimit.py) against go1.21's runtime/mgclimit_test.go
``TestGCCPULimiter``: its steps re-expressed as data (a fake clock in ns, 14 Ps, twice over
to show no state leaks), then sweeperd's own use (world-stopped marks, the enabled seconds)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeperd.pacing.gclimit import (
    CAPACITY_PER_PROC_NS,
    GO_BACKGROUND_UTILIZATION,
    UPDATE_PERIOD_NS,
    GCCPULimiter,
    LimiterError,
)

PROCS = 14
MS, US, S = 1_000_000, 1_000, 1_000_000_000
CAP = CAPACITY_PER_PROC_NS
BG = GO_BACKGROUND_UTILIZATION
STW = 2 * MS + 1 * US  # the first transition's stop-the-world


def _assist(d: int, frac: float) -> int:
    """Go's assistTime: CPU-ns of assists using ``frac`` of GOMAXPROCS over ``d``."""
    return int(frac * d * PROCS)


# (step, operation, advance ns, argument, expected fill (None: not checked), limiting,
#  overflow gained this iteration (None: not checked)) — in the order of TestGCCPULimiter.
FACTOR = 1 / (1 - 2 * BG)
STEPS = [
    ("mutator time only", "update", 10 * MS, None, 0, False, 0),
    ("mutator time only", "update", 1 * S, None, 0, False, 0),
    ("mutator time only", "update", 3600 * S, None, 0, False, 0),
    ("need update: half a period", "need_update", UPDATE_PERIOD_NS // 2, False, None, False, 0),
    ("need update: 1.5 periods", "need_update", UPDATE_PERIOD_NS, True, None, False, 0),
    ("update", "update", 0, None, None, False, 0),
    ("no need just after", "need_update", 0, False, None, False, 0),
    ("GC on", "start", 109 * MS, True, None, False, 0),
    ("STW fills", "finish", STW, None, STW * PROCS, False, 0),
    ("drain to procs ns during GC", "update", int(FACTOR * (STW * PROCS - PROCS) / PROCS), None,
     PROCS, False, 0),
    ("drain to zero", "update", 2 * PROCS * CAP, None, 0, False, 0),
    ("50% GC work: no change", "assist", 10 * MS, 0.5 - BG, 0, False, 0),
    ("100% GC work fills", "assist", 1 * MS, 1.0 - BG, PROCS * MS, False, 0),
    ("filled exactly", "assist", CAP - 1 * MS, 1.0 - BG, PROCS * CAP, True, 0),
    ("exactly 50%: still on", "assist", 1 * S, 0.5 - BG, PROCS * CAP, True, 0),
    ("drain by half", "assist", CAP, 0.0, PROCS * CAP // 2, False, 0),
    ("overfill", "assist", CAP, 1.0 - BG, PROCS * CAP, True, CAP * PROCS // 2),
    ("GC off with assists left", "start_assist", 1 * MS, False, PROCS * CAP, True,
     (CAP // 2 + 1 * MS) * PROCS),
    ("the STW adds", "finish", 5 * MS, None, PROCS * CAP, True, (CAP // 2 + 6 * MS) * PROCS),
    ("more procs: stops", "reset", 0, PROCS + 10, PROCS * CAP, False,
     (CAP // 2 + 6 * MS) * PROCS),
    ("fewer procs: limits", "reset", 0, PROCS - 10, (PROCS - 10) * CAP, True,
     (CAP // 2 + 6 * MS) * PROCS),
    ("back to zero", "reset", CAP * PROCS, PROCS, 0, False, (CAP // 2 + 6 * MS) * PROCS),
]


def test_go_s_limiter_test_step_by_step_twice():
    now = 0
    lim = GCCPULimiter(PROCS, last_update=now)
    base = 0
    for _ in range(2):
        assert lim.capacity == PROCS * CAP and lim.fill == 0
        for name, op, adv, arg, fill, limiting, overflow in STEPS:
            now += adv
            if op == "update":
                lim.update(now)
            elif op == "need_update":
                assert lim.need_update(now) is arg, name
            elif op == "start":
                lim.start_gc_transition(arg, now)
            elif op == "start_assist":
                lim.add_assist_time(_assist(adv, 1.0 - BG))
                lim.start_gc_transition(arg, now)
            elif op == "finish":
                lim.finish_gc_transition(now)
            elif op == "assist":
                lim.add_assist_time(_assist(adv, arg))
                lim.update(now)
            elif op == "reset":
                lim.reset_capacity(now, arg)
            if fill is not None:
                assert lim.fill == fill, name
            assert lim.limiting() is limiting, name
            assert lim.overflow == base + overflow, name
        base += (CAP // 2 + 6 * MS) * PROCS


def test_transitions_out_of_order_are_refused_as_go_throws():
    lim = GCCPULimiter(2)
    with pytest.raises(LimiterError):
        lim.finish_gc_transition(1)
    with pytest.raises(LimiterError):
        lim.start_gc_transition(False, 1)  # already off
    lim.start_gc_transition(True, 1)
    with pytest.raises(LimiterError):
        lim.start_gc_transition(False, 2)
    with pytest.raises(ValueError):
        GCCPULimiter(0)


def test_a_time_before_the_last_update_changes_nothing():
    lim = GCCPULimiter(2, last_update=10 * S, background_utilization=1.0, gc_enabled=True)
    lim.update(5 * S)
    assert lim.fill == 0 and lim.last_update == 10 * S


def _world_stopped(lim: GCCPULimiter, now: int, mark_ns: int, gap_ns: int) -> int:
    """One sweeperd cycle: a mark of ``mark_ns`` (all GC), then ``gap_ns`` of mutators."""
    lim.start_gc_transition(True, now)
    lim.finish_gc_transition(now)
    now += mark_ns
    lim.start_gc_transition(False, now)
    lim.finish_gc_transition(now)
    now += gap_ns
    lim.update(now)
    return now


def test_back_to_back_world_stopped_marks_enable_it_and_count_enabled_seconds():
    """sweeperd's marks stop the world: with marks of 300 ms 100 ms apart (75% GC) the bucket
    gains 200 ms per P per cycle and is full in the fifth; it then drains for the 100 ms the
    mutators run, and each full bucket is charged as enabled until the next update."""
    lim = GCCPULimiter(2, background_utilization=1.0)
    now = 0
    for _ in range(4):
        now = _world_stopped(lim, now, 300 * MS, 100 * MS)
    assert not lim.limiting() and lim.enabled_ns == 0 and lim.enabled_times == 0
    lim.start_gc_transition(True, now)
    lim.finish_gc_transition(now)
    lim.update(now + 300 * MS)
    assert lim.limiting() and lim.fill == lim.capacity
    lim.update(now + 350 * MS)  # GC still on: more GC time, still full, 50 ms enabled
    assert lim.limiting() and lim.enabled_ns == 50 * MS and lim.enabled_times == 1


@given(marks=st.lists(st.tuples(st.integers(0, 2 * S), st.integers(0, 2 * S)), max_size=30),
       procs=st.integers(1, 64))
def test_invariants_hold_over_any_schedule(marks, procs):
    lim = GCCPULimiter(procs, background_utilization=1.0)
    now, over, en = 0, 0, 0
    for mark, gap in marks:
        now = _world_stopped(lim, now, mark, gap)
        assert 0 <= lim.fill <= lim.capacity
        assert not lim.enabled or lim.fill == lim.capacity
        assert lim.overflow >= over and lim.enabled_ns >= en
        over, en = lim.overflow, lim.enabled_ns
    # GC at most half of the time, each mark under 1 s: the bucket never fills from empty
    if all(m <= g and m < CAP for m, g in marks):
        assert lim.enabled_times == 0


# --- in the cycle machine ---------------------------------------------------------------------

def _machine_cycle(m, mut, now: float, mark_s: float) -> float:
    """Drive one cycle of ``m`` (one mutator, no sweeper) from an IDLE tick whose heap is over
    the trigger; the mark takes ``mark_s``.  Returns the time the cycle ended."""
    from sweeperd.daemon import cycle as c

    acts = m.handle(c.Tick(now))
    assert any(isinstance(a, c.MeasureHeap) for a in acts)
    acts = m.handle(c.HeapMeasured(1 << 30, 1 << 40, 1 << 41))
    assert any(isinstance(a, c.SendMark) for a in acts), "the trigger fired"
    now += mark_s
    m.handle(c.Marked(mut, m.sweepgen + 2, now, 1 << 20))
    m.handle(c.LiveMeasured(1 << 20, 10))
    now += 0.001
    m.handle(c.Tick(now))
    m.handle(c.SweepMeasured(0, False, 0, 0))
    assert m.phase is c.Phase.IDLE
    return now


def _machine():
    from sweeperd.daemon import cycle as c
    from sweeperd.daemon.events import Role, Slot

    mut = Slot(Role.MUTATOR, 0)
    m = c.GCCycle(c.Params(gogc=100, min_goal_bytes=1 << 20, nsweepers=1, trigger_check_s=0,
                           dead_after_s=1e9, start_after_s=1e9, limiter_procs=1),
                  sweepgen=4)
    m.handle(c.Started(mut, 0.0))
    m.handle(c.Hello(mut, 0.0))
    return m, mut


def test_the_machine_holds_back_the_trigger_until_mutators_had_as_long_as_the_last_mark():
    """Marks of 0.5 s 1 ms apart (one mutator: a 1 s bucket): after two the bucket holds
    0.998 s, no room for a third; the heap over its trigger starts no cycle until the mutators
    have run 0.5 s more, and the time held is counted as capped."""
    from sweeperd.daemon import cycle as c

    m, mut = _machine()
    now = 0.0
    for _ in range(2):
        now = _machine_cycle(m, mut, now, 0.5)
    lim = m.limiter
    assert lim is not None and not lim.admits() and lim.enabled_ns == 0
    for dt in (0.001, 0.2, 0.2):  # 0.401 s of mutator time: still no room
        now += dt
        assert any(isinstance(a, c.MeasureHeap) for a in m.handle(c.Tick(now)))
        acts = m.handle(c.HeapMeasured(1 << 30, 1 << 40, 1 << 41))
        assert not any(isinstance(a, c.SendMark) for a in acts) and m.phase is c.Phase.IDLE
        assert lim.capping()
    now += 0.1  # 0.501 s: room again
    _machine_cycle(m, mut, now, 0.5)
    assert lim.enabled_ns == pytest.approx(0.5 * S, abs=1000)  # from the first refusal
    assert not lim.held


def test_a_nearly_full_heap_starts_a_cycle_whatever_the_limiter():
    from sweeperd.daemon import cycle as c

    m, mut = _machine()
    now = 0.0
    for _ in range(2):
        now = _machine_cycle(m, mut, now, 0.5)
    now += 0.001
    m.handle(c.Tick(now))
    acts = m.handle(c.HeapMeasured(1 << 30, 1, 1 << 41))  # 1 byte of headroom
    assert any(isinstance(a, c.SendMark) for a in acts)


def test_marks_under_half_the_time_are_never_held():
    m, mut = _machine()
    now = 0.0
    for _ in range(20):
        now = _machine_cycle(m, mut, now + 0.3, 0.29)  # asserts each trigger fires
    assert m.limiter is not None and m.limiter.enabled_ns == 0
