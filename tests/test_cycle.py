"""The GC cycle machine, without processes: a simulated world of workers drives it in random
orders (hypothesis), with deaths and hangs of any worker in every phase.

The world keeps the truth the machine cannot see: which processes are alive, which answer,
how many pages are left in the shards, which chunks are in flight and whose, which spans the
shards missed.  It carries out every action the machine returns, answering measurements
with that truth, and checks at each action that the machine acted on facts: termination only
when nothing is left to sweep, recovery only of a process that is gone, messages only to
workers it believed up.  Teardown runs a fair schedule and checks that the cycle in progress
and one more both finish: no worker is waited on forever.
"""

from __future__ import annotations

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sweeperd.daemon import cycle as c
from sweeperd.daemon.cycle import Phase, Role, Slot

NSWEEPERS, NMUTATORS = 2, 2
SLOTS = ([Slot(Role.SWEEPER, i) for i in range(NSWEEPERS)]
         + [Slot(Role.MUTATOR, j) for j in range(NMUTATORS)] + [Slot(Role.SCAVENGER, 0)])
PAGES = 64
DEAD_AFTER = 1.0


class Proc:
    """One incarnation of a worker process, as the world sees it."""

    def __init__(self) -> None:
        self.alive = True
        self.hello = False
        self.hung = False  # alive but never answers again
        self.mark_for: int | None = None  # a mark it has not answered
        self.sweep_for: int | None = None  # a sweep it has not answered
        self.resumed = False


class World(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.now = 0.0
        self.sweepgen = 4
        self.m = c.GCCycle(c.Params(gogc=100, min_goal_bytes=1 << 20, nsweepers=NSWEEPERS,
                                    dead_after_s=DEAD_AFTER, max_deaths=10_000),
                           sweepgen=self.sweepgen)
        self.procs: dict[Slot, Proc] = {}
        self.remaining = 0
        self.in_flight: dict[Slot, int] = {}  # owner -> pages of the chunk it holds
        self.claimed: dict[Slot, int] = {}  # owner -> spans claimed on demand (h-1)
        self.missed = 0
        self.objects = 0
        self.cycles_done = 0
        self.fair = False
        for s in SLOTS:
            self._start(s)

    # --- the world carrying out actions ------------------------------------------------

    def feed(self, ev: c.Event) -> None:
        queue = list(self.m.handle(ev))
        while queue:
            a = queue.pop(0)
            queue[:0] = self.do(a)

    def do(self, a: c.Action) -> list[c.Action]:
        m = self.m
        if isinstance(a, c.MeasureHeap):
            return m.handle(c.HeapMeasured(self.objects, PAGES * 8192 - self.objects,
                                           2 * PAGES * 8192))
        if isinstance(a, c.MeasureLive):
            return m.handle(c.LiveMeasured(self.objects // 2, PAGES))
        if isinstance(a, c.MeasureSweep):
            return m.handle(c.SweepMeasured(self.remaining, bool(self.in_flight),
                                            sum(self.claimed.values()), self.missed))
        if isinstance(a, c.SendMark):
            assert a.cycle == self.sweepgen + 2
            for s in a.slots:
                self._believed_up(s)
                self.procs[s].mark_for = a.cycle
        elif isinstance(a, c.BeginSweep):
            assert a.sweepgen == self.sweepgen + 2, "sweepgen grows by 2 per cycle"
            assert not any(p.mark_for for p in self.procs.values() if p.alive and not p.hung)
            self.sweepgen = a.sweepgen
            self.remaining, self.missed = PAGES, 0
            assert not self.in_flight and not self.claimed
        elif isinstance(a, c.SendSweep):
            assert a.cycle == self.sweepgen
            for s in a.slots:
                self._believed_up(s)
                self.procs[s].sweep_for = a.cycle
        elif isinstance(a, c.SendResume):
            for s in a.slots:
                self._believed_up(s)
                self.procs[s].resumed = True
        elif isinstance(a, c.SweepMissed):
            self.missed = 0
        elif isinstance(a, c.EndCycle):
            # termination declared: it must be true
            assert self.remaining == 0 and not self.in_flight and self.missed == 0
            assert not self.claimed, "a span claimed and not swept"
            assert not any(p.sweep_for == self.sweepgen for p in self.procs.values()
                           if p.alive and not p.hung), "a sweeper still sweeping"
            assert a.cycles == self.cycles_done + 1
            self.cycles_done += 1
            self.objects = 0
            event(f"cycle ended during {'teardown' if self.fair else 'random steps'}")
        elif isinstance(a, c.Kill):
            assert a.silent_s > DEAD_AFTER
            self.procs[a.slot].alive = False
            return m.handle(c.Died(a.slot))
        elif isinstance(a, c.Recover):
            assert not self.procs[a.slot].alive, "recovering a process that still runs"
            self.in_flight.pop(a.slot, None)  # its chunk and claims are finished
            self.claimed.pop(a.slot, None)
        elif isinstance(a, c.Restart):
            assert not self.procs[a.slot].alive
            self._start(a.slot)
        return []

    def _start(self, s: Slot) -> None:
        self.procs[s] = Proc()
        self.feed(c.Started(s, self.now))

    def _believed_up(self, s: Slot) -> None:
        assert self.m.members[s].state is c.MemberState.UP

    # --- what processes do ------------------------------------------------------------

    def _answering(self, role: Role | None = None) -> list[Slot]:
        return [s for s, p in sorted(self.procs.items())
                if p.alive and not p.hung and (role is None or s.role == role)]

    @rule(dt=st.sampled_from([0.001, 0.01, 0.05, 0.3, 0.7]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.objects += 400_000
        self.feed(c.Tick(self.now))

    @rule(data=st.data())
    def hello(self, data: st.DataObject) -> None:
        new = [s for s in self._answering() if not self.procs[s].hello]
        if new:
            s = data.draw(st.sampled_from(new))
            self.procs[s].hello = True
            self.feed(c.Hello(s, self.now))

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        up = [s for s in self._answering() if self.procs[s].hello]
        if up:
            self.feed(c.Heard(data.draw(st.sampled_from(up)), self.now))

    @rule(data=st.data())
    def mutator_marks(self, data: st.DataObject) -> None:
        ready = [s for s in self._answering(Role.MUTATOR) if self.procs[s].mark_for]
        if ready:
            s = data.draw(st.sampled_from(ready))
            cyc, self.procs[s].mark_for = self.procs[s].mark_for, None
            self.procs[s].resumed = False
            assert cyc is not None
            self.feed(c.Marked(s, cyc, self.now))

    @rule(data=st.data(), pages=st.integers(1, 40))
    def take_chunk(self, data: st.DataObject, pages: int) -> None:
        """A sweeper (or a resumed mutator paying sweep debt) takes a chunk."""
        who = [s for s in self._answering() if s not in self.in_flight and (
            self.procs[s].sweep_for == self.sweepgen or self.procs[s].resumed)]
        if who and self.remaining and self.m.phase is Phase.SWEEP:
            s = data.draw(st.sampled_from(who))
            k = min(pages, self.remaining)
            self.remaining -= k
            self.in_flight[s] = k

    @rule(data=st.data())
    def finish_chunk(self, data: st.DataObject) -> None:
        held = [s for s in self._answering() if s in self.in_flight]
        if held:
            del self.in_flight[data.draw(st.sampled_from(held))]

    @precondition(lambda self: self.m.phase is Phase.SWEEP)
    @rule(data=st.data())
    def mutator_sweeps_a_span_on_demand(self, data: st.DataObject) -> None:
        who = [s for s in self._answering(Role.MUTATOR) if self.procs[s].resumed]
        if who and self.missed:
            s = data.draw(st.sampled_from(who))
            self.missed -= 1
            self.claimed[s] = self.claimed.get(s, 0) + 1

    @rule(data=st.data())
    def finish_claimed_span(self, data: st.DataObject) -> None:
        held = [s for s in self._answering() if self.claimed.get(s)]
        if held:
            del self.claimed[data.draw(st.sampled_from(held))]

    @rule(data=st.data())
    def sweeper_done(self, data: st.DataObject) -> None:
        done = [s for s in self._answering(Role.SWEEPER) if s not in self.in_flight
                and self.procs[s].sweep_for == self.sweepgen and self.remaining == 0]
        if done:
            s = data.draw(st.sampled_from(done))
            self.procs[s].sweep_for = None
            self.feed(c.Swept(s, self.sweepgen, self.now))

    @precondition(lambda self: self.m.phase is Phase.SWEEP)
    @rule()
    def shards_miss_a_span(self) -> None:
        self.missed += 1

    @rule(slot=st.sampled_from(SLOTS), hang=st.booleans())
    def misfortune(self, slot: Slot, hang: bool) -> None:
        """kill -9 at any moment, in any phase (the shell notices and says so), or a hang:
        alive, and never answering again."""
        if hang:
            self.procs[slot].hung = True
        elif self.procs[slot].alive:
            self.procs[slot].alive = False
            self.feed(c.Died(slot))

    @rule()
    def every_worker_takes_a_step(self) -> None:
        self._fair_step()

    @rule()
    def client_asks_for_gc(self) -> None:
        self.feed(c.GcRequested())

    @rule(slot=st.sampled_from(SLOTS), cyc=st.integers(0, 20))
    def untimely_message_is_refused_without_harm(self, slot: Slot, cyc: int) -> None:
        before = (self.m.phase, set(self.m.pending), self.m.sweepgen, self.m.awaiting)
        ev = c.Marked(slot, cyc, self.now) if cyc % 2 else c.Swept(slot, cyc, self.now)
        legal = slot in self.m.pending and (
            (isinstance(ev, c.Marked) and self.m.phase is Phase.MARK
             and cyc == self.m.sweepgen + 2)
            or (isinstance(ev, c.Swept) and self.m.phase is Phase.SWEEP
                and cyc == self.m.sweepgen))
        if legal:
            return
        with pytest.raises(c.IllegalTransition):
            self.m.handle(ev)
        assert (self.m.phase, set(self.m.pending), self.m.sweepgen, self.m.awaiting) == before

    # --- always ---------------------------------------------------------------------------

    @invariant()
    def only_live_workers_are_waited_on(self) -> None:
        if not hasattr(self, "m"):
            return
        for s in self.m.pending:
            assert self.m.members[s].state is c.MemberState.UP
        assert self.m.awaiting is None  # every measurement was answered at once
        assert self.m.sweepgen == self.sweepgen  # the world's heap and the machine agree

    def _fair_step(self) -> None:
        """Every answering worker does the next thing it would do."""
        for s in self._answering():
            p = self.procs[s]
            if not p.alive or p.hung:
                continue  # died during this step (a kill by the machine)
            if not p.hello:
                p.hello = True
                self.feed(c.Hello(s, self.now))
            elif p.mark_for and self.m.phase is Phase.MARK:
                cyc, p.mark_for = p.mark_for, None
                p.resumed = False
                self.feed(c.Marked(s, cyc, self.now))
            elif p.sweep_for == self.sweepgen and self.m.phase is Phase.SWEEP:
                self.in_flight.pop(s, None)
                self.remaining = 0
                p.sweep_for = None
                self.feed(c.Swept(s, self.sweepgen, self.now))
            else:
                self.in_flight.pop(s, None)
                self.claimed.pop(s, None)
                self.feed(c.Heard(s, self.now))

    def teardown(self) -> None:
        """A fair schedule from here: every cycle in progress ends, and another after it."""
        if not hasattr(self, "m"):
            return
        target = self.cycles_done + 2
        self.fair = True
        self.feed(c.GcRequested())
        for _ in range(5000):
            if self.cycles_done >= target:
                return
            self._fair_step()
            self.now += 0.05
            self.objects += 50_000
            self.feed(c.Tick(self.now))
            if self.m.phase is Phase.IDLE and self.cycles_done < target:
                self.feed(c.GcRequested())
        raise AssertionError(f"no progress: phase {self.m.phase}, pending {self.m.pending}, "
                             f"remaining {self.remaining}, in flight {self.in_flight}, "
                             f"claimed {self.claimed}")


World.TestCase.settings = settings(max_examples=200, stateful_step_count=80, deadline=None)
test_cycle_machine = World.TestCase


# --- direct checks ------------------------------------------------------------------------


def _machine() -> c.GCCycle:
    return c.GCCycle(c.Params(nsweepers=1, dead_after_s=5.0), sweepgen=4)


def test_illegal_event_in_phase_fails_by_name_and_changes_nothing():
    m = _machine()
    with pytest.raises(c.IllegalTransition, match="Marked is not legal in phase idle"):
        m.handle(c.Marked(Slot(Role.MUTATOR, 0), 6, 0.0))
    with pytest.raises(c.IllegalTransition, match="LiveMeasured is not legal in phase idle"):
        m.handle(c.LiveMeasured(0, 0))
    with pytest.raises(c.IllegalTransition, match="HeapMeasured was not asked for"):
        m.handle(c.HeapMeasured(0, 0, 0))
    with pytest.raises(c.IllegalTransition, match="mutator 3 is not a member"):
        m.handle(c.Hello(Slot(Role.MUTATOR, 3), 0.0))
    assert m.phase is Phase.IDLE and not m.members and m.awaiting is None


def test_a_whole_cycle_in_order():
    m = _machine()
    sw, mu = Slot(Role.SWEEPER, 0), Slot(Role.MUTATOR, 0)
    for s in (sw, mu):
        m.handle(c.Started(s, 0.0))
    assert m.handle(c.Hello(sw, 0.1)) == []
    assert m.handle(c.Hello(mu, 0.1)) == [c.SendResume((mu,), 4, 0.0)]
    assert m.handle(c.Tick(0.2)) == [c.MeasureHeap()]
    assert m.handle(c.HeapMeasured(10 << 20, 100 << 20, 200 << 20)) == [
        c.SendMark((mu,), 6)]
    assert m.phase is Phase.MARK
    assert m.handle(c.Marked(mu, 6, 0.3, 8 << 20)) == [c.MeasureLive(8 << 20)]
    acts = m.handle(c.LiveMeasured(8 << 20, 1000))
    assert acts[0] == c.BeginSweep(6, 1, 16 << 20, (8 << 20) + int(0.9 * (8 << 20)))
    assert acts[1] == c.SendSweep((sw,), 6) and isinstance(acts[2], c.SendResume)
    assert m.handle(c.Tick(0.4)) == []  # the sweeper has not answered: nothing to measure
    m.handle(c.Swept(sw, 6, 0.5))
    assert m.handle(c.Tick(0.5)) == [c.MeasureSweep()]
    assert m.handle(c.SweepMeasured(0, False, 3, 0)) == []  # a mutator still holds spans
    assert m.handle(c.Tick(0.6)) == [c.MeasureSweep()]
    assert m.handle(c.SweepMeasured(0, False, 0, 2)) == [c.SweepMissed()]
    assert m.handle(c.Tick(0.7)) == [c.MeasureSweep()]
    assert m.handle(c.SweepMeasured(0, False, 0, 0)) == [c.EndCycle(1, pytest.approx(0.4))]
    assert m.phase is Phase.IDLE and m.cycles == 1


def test_a_starting_worker_has_start_after_not_dead_after_to_say_hello():
    """A spawn on a loaded host takes seconds: before its hello a worker is judged against
    start_after_s (a short dead_after must not kill every start in a loop); after it, against
    dead_after_s."""
    m = c.GCCycle(c.Params(nsweepers=1, dead_after_s=1.0, start_after_s=30.0), sweepgen=4)
    sw, late = Slot(Role.SWEEPER, 0), Slot(Role.SWEEPER, 1)
    m.handle(c.Started(sw, 0.0))
    m.handle(c.Started(late, 0.0))

    def kills(now: float) -> list[c.Action]:
        return [a for a in m.handle(c.Tick(now)) if isinstance(a, c.Kill)]

    assert kills(29.0) == []  # 29 x dead_after, still starting: not killed
    m.handle(c.Hello(sw, 29.6))
    assert kills(30.5) == [c.Kill(late, pytest.approx(30.5))]  # a hung start
    assert kills(30.7) == [c.Kill(sw, pytest.approx(1.1))]  # up: dead_after


def test_a_silent_worker_is_killed_then_recovered_and_restarted():
    m = _machine()
    mu = Slot(Role.MUTATOR, 0)
    m.handle(c.Started(mu, 0.0))
    m.handle(c.Hello(mu, 0.0))
    m.handle(c.GcRequested())
    assert m.handle(c.Tick(0.01)) == [c.SendMark((mu,), 6, forced=True)]
    assert m.handle(c.Tick(5.0)) == []
    kill = m.handle(c.Tick(5.02))  # silent while marking: killed, and the mark goes on
    assert kill == [c.Kill(mu, pytest.approx(5.02)), c.MeasureLive()]
    assert m.pending == set()
    m.handle(c.LiveMeasured(0, 0))
    assert m.handle(c.Died(mu)) == [c.Recover(mu), c.Restart(mu)]
    m.handle(c.Stopping())
    m.handle(c.Started(mu, 5.1))
    assert m.handle(c.Died(mu)) == [c.Recover(mu)]  # stopping: no restart


def test_every_phase_has_a_tick_and_the_common_events():
    for ph, table in c.TRANSITIONS.items():
        if ph is Phase.BROKEN:
            continue
        for ev in (c.Tick, c.Started, c.Hello, c.Heard, c.Died, c.GcRequested, c.Stopping,
                   c.ActionFailed):
            assert ev in table, (ph, ev)
    assert {a for a, _ in c.EDGES} == set(Phase) - {Phase.BROKEN}


# --- BROKEN ---------------------------------------------------------------------------------

MU, SW = Slot(Role.MUTATOR, 0), Slot(Role.SWEEPER, 0)
EVERY_EVENT = [c.Tick(9.0), c.Started(Slot(Role.MUTATOR, 1), 9.0), c.Hello(MU, 9.0),
               c.Heard(MU, 9.0), c.Marked(MU, 6, 9.0, 1), c.Swept(SW, 6, 9.0), c.Died(MU),
               c.GcRequested(), c.Stopping(), c.ActionFailed("Restart", "again"),
               c.HeapMeasured(0, 0, 0), c.LiveMeasured(0, 0), c.SweepMeasured(0, False, 0, 0)]


def _in_phase(phase: Phase) -> c.GCCycle:
    """A machine with one sweeper and one mutator up, brought to ``phase``."""
    m = _machine()
    for s in (SW, MU):
        m.handle(c.Started(s, 0.0))
        m.handle(c.Hello(s, 0.1))
    if phase is not Phase.IDLE:
        m.handle(c.GcRequested())
        assert m.handle(c.Tick(0.2)) == [c.SendMark((MU,), 6, forced=True)]
    if phase is Phase.SWEEP:
        m.handle(c.Marked(MU, 6, 0.3, 1 << 20))
        assert isinstance(m.handle(c.LiveMeasured(1 << 20, 10))[0], c.BeginSweep)
    assert m.phase is phase
    return m


def test_the_broken_edges_lead_only_into_a_terminal_phase():
    assert {(src, to) for (src, e), to in c.EDGES.items() if e == "broken"} == {
        (p, Phase.BROKEN) for p in Phase if p is not Phase.BROKEN}
    assert not any(src is Phase.BROKEN for src, _ in c.EDGES)  # no way out
    assert c.TRANSITIONS[Phase.BROKEN] == {}  # the table says every event is illegal there


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.MARK, Phase.SWEEP])
def test_a_failed_action_breaks_the_machine_for_good_naming_phase_action_and_cause(phase):
    m = _in_phase(phase)
    assert m.handle(c.ActionFailed("BeginSweep", "OSError: [Errno 5] boom")) == []
    assert m.phase is Phase.BROKEN and not m.pending and m.awaiting is None
    assert m.broken == c.Broken(phase, "action BeginSweep", "OSError: [Errno 5] boom")
    assert str(m.broken) == (f"action BeginSweep failed in phase {phase.value}: "
                             "OSError: [Errno 5] boom")
    before = (m.sweepgen, m.cycles, dict(m.members), m.broken)
    for ev in EVERY_EVENT:
        with pytest.raises(c.IllegalTransition, match="not legal in phase broken"):
            m.handle(ev)
    assert (m.sweepgen, m.cycles, dict(m.members), m.broken) == before
    assert m.phase is Phase.BROKEN


def test_a_failed_measurement_breaks_the_machine_while_it_awaits_the_answer():
    m = _in_phase(Phase.IDLE)
    assert m.handle(c.Tick(0.5)) == [c.MeasureHeap()] and m.awaiting is c.HeapMeasured
    m.handle(c.ActionFailed("MeasureHeap", "RuntimeError: no"))
    assert m.phase is Phase.BROKEN and m.awaiting is None
    with pytest.raises(c.IllegalTransition):
        m.handle(c.HeapMeasured(0, 1, 1))  # the answer that never came is refused too


def test_a_broken_invariant_moves_the_machine_to_broken_and_names_the_event():
    m = _in_phase(Phase.IDLE)
    m.pending.add(SW)  # a bug: a pending worker in IDLE
    with pytest.raises(c.CycleInvariantBroken, match="sweeper 0 pending in phase idle"):
        m.handle(c.Tick(0.5))
    assert m.phase is Phase.BROKEN
    assert m.broken is not None and m.broken.phase is Phase.IDLE
    assert m.broken.what == "event Tick" and "sweeper 0 pending" in m.broken.cause
    with pytest.raises(c.IllegalTransition):
        m.handle(c.Tick(0.6))


def test_restarts_back_off_and_too_many_deaths_give_up():
    m = c.GCCycle(c.Params(nsweepers=1, restart_backoff_s=0.1, restart_backoff_max_s=0.3,
                           max_deaths=4, death_window_s=10.0, trigger_check_s=1e9),
                  sweepgen=4)
    assert m.handle(c.Tick(0.0)) == [c.MeasureHeap()]  # (the only heap check, answered)
    m.handle(c.HeapMeasured(0, 1 << 30, 1 << 30))
    sw = Slot(Role.SWEEPER, 0)
    m.handle(c.Started(sw, 0.0))
    assert m.handle(c.Died(sw)) == [c.Recover(sw), c.Restart(sw)]  # the first: at once
    waits = []
    for _ in range(3):
        m.handle(c.Started(sw, m.now))
        assert m.handle(c.Died(sw)) == [c.Recover(sw)]  # then after a wait
        t0 = m.now
        while not (acts := m.handle(c.Tick(m.now + 0.01))):
            pass
        assert acts == [c.Restart(sw)]
        waits.append(m.now - t0)
    for got, want in zip(waits, [0.1, 0.2, 0.3], strict=True):  # doubling, capped
        assert want <= got <= want + 0.011  # (ticks are 10 ms apart)
    m.handle(c.Started(sw, m.now))
    assert m.handle(c.Died(sw)) == [c.Recover(sw), c.GiveUp(Role.SWEEPER, 5, 10.0)]
    assert m.stopping and m.handle(c.Tick(m.now + 10)) == []  # no restart after giving up


def test_the_live_heap_to_measure_is_the_sum_of_the_mutators_marks():
    m = _machine()
    mus = [Slot(Role.MUTATOR, i) for i in range(3)]
    for s in mus:
        m.handle(c.Started(s, 0.0))
        m.handle(c.Hello(s, 0.1))
    m.handle(c.Tick(0.2))
    assert m.handle(c.HeapMeasured(10 << 20, 100 << 20, 200 << 20)) == [
        c.SendMark(tuple(mus), 6)]
    assert m.handle(c.Marked(mus[0], 6, 0.3, 5)) == []
    assert m.handle(c.Marked(mus[2], 6, 0.3, 7)) == []
    assert m.handle(c.Marked(mus[1], 6, 0.3, 11)) == [c.MeasureLive(23)]


# --- who may say what: the rules the shell used to judge ----------------------------------


SC = Slot(Role.SCAVENGER, 0)


@pytest.mark.parametrize("who", [SW, SC])
def test_only_a_mutator_may_report_a_mark(who):
    m = _in_phase(Phase.MARK)
    m.handle(c.Started(SC, 0.0))
    m.handle(c.Hello(SC, 0.1))
    with pytest.raises(c.IllegalTransition, match="not a mutator"):
        m.handle(c.Marked(who, 6, 0.4, 1 << 20))
    assert m.phase is Phase.MARK and m.pending == {MU}  # nothing changed
    assert isinstance(m.handle(c.Marked(MU, 6, 0.5, 1 << 20))[0], c.MeasureLive)


@pytest.mark.parametrize("who", [MU, SC])
def test_only_a_sweeper_may_report_a_sweep(who):
    m = _in_phase(Phase.SWEEP)
    m.handle(c.Started(SC, 0.0))
    m.handle(c.Hello(SC, 0.1))
    with pytest.raises(c.IllegalTransition, match="not a sweeper"):
        m.handle(c.Swept(who, 6, 0.4))
    assert m.phase is Phase.SWEEP and m.pending == {SW}
    assert m.handle(c.Swept(SW, 6, 0.5)) == []
    assert m.pending == set()


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.MARK, Phase.SWEEP])
def test_a_heartbeat_must_carry_its_own_roles_figures(phase):
    m = _in_phase(phase)
    for who, other in ((MU, Role.SCAVENGER), (MU, Role.SWEEPER), (SW, Role.MUTATOR)):
        before = m.members[who].last_heard
        with pytest.raises(c.IllegalTransition, match="figures"):
            m.handle(c.Heard(who, 5.0, other))
        assert m.members[who].last_heard == before  # not heard: nothing changed
    assert m.handle(c.Heard(MU, 5.0, Role.MUTATOR)) == []
    assert m.handle(c.Heard(SW, 5.0)) == []  # a beat alone
    assert m.members[MU].last_heard == m.members[SW].last_heard == 5.0


def test_the_machine_knows_who_said_hello_through_a_kill_until_the_death():
    """Membership is the machine's (the supervisor holds processes and identities only): a
    slot is greeted from its hello until its death, through being killed for silence."""
    m = _machine()
    m.handle(c.Started(MU, 0.0))
    assert m.greeted() == frozenset()
    m.handle(c.Hello(MU, 0.1))
    assert m.greeted() == {MU}
    m.handle(c.Started(SW, 0.1))
    kills = [a for a in m.handle(c.Tick(0.1 + 10 * DEAD_AFTER + 60)) if isinstance(a, c.Kill)]
    assert {k.slot for k in kills} == {MU, SW}  # silent: one up, one never started
    assert m.members[MU].state is c.MemberState.KILLING and m.greeted() == {MU}
    m.handle(c.Died(MU))
    assert m.greeted() == frozenset()
