"""The GC cycle as a state machine: events in, actions out; no processes, sockets or clocks.

Theory of operation
-------------------
The coordinator drives GC cycles over worker processes it cannot trust to stay alive.  This
module is that logic alone, as h11's ``_state.py`` is HTTP's: :class:`GCCycle` takes
**events** (what happened: a worker started, said hello, was heard from, marked, swept, died; a
tick of the clock; a client asked for ``gc``; the answer to a measurement it asked for) and
returns **actions** (what to do: send mark, begin the sweep, send sweep, resume mutators with
their sweep rate, measure the heap, sweep what the shards missed, end the cycle, kill a silent
worker, recover a dead one, restart it).  The shell (coordinator.py) owns sockets, processes,
the heap and the clock; it turns what arrives into events and carries out the actions, and it
answers a ``Measure*`` action at once with the matching ``*Measured`` event.

Phases, and the only edges between them (:data:`EDGES`)::

    IDLE --trigger--> MARK --marked--> SWEEP --terminated--> IDLE
    IDLE | MARK | SWEEP --broken--> BROKEN                       (terminal)

``IDLE``   mutators allocate.  Each tick (at most every ``trigger_check_s``) the heap is
           measured; when its objects reach the trigger, the heap is nearly full, or a client
           asked for ``gc``, every mutator that is up is sent ``mark``.  While the GC CPU
           limiter caps the GC (:attr:`GCCycle.limiter`, Go's mgclimit.go: marks took more than
           half the mutators' time, by a second per mutator) the trigger waits until the
           mutators have had as long as the last mark; a nearly full heap and ``gc`` do not.
           Every event's ``now`` updates the limiter; a mark is GC time.
``MARK``   each mutator flushes its mcache, marks its live objects and answers ``marked``.
           When none is pending the live heap is measured, the goal and trigger are set
           (pacing/gcpace.py), ``sweepgen`` advances by 2, the pages are sharded, sweepers are
           sent ``sweep`` and mutators ``resume`` with their proportional sweep rate.
``SWEEP``  sweepers sweep their shards and steal; mutators sweep on demand.  When no sweeper
           is pending, each tick measures what is left; termination is declared only when no
           page is left in any shard, no chunk is in flight, and no span is claimed (h-1) or
           unswept (h-2) — spans the shards missed are swept by the coordinator first and the
           measurement repeated.

``BROKEN`` the machine cannot go on: one of its own invariants broke (a bug), or the shell
           could not carry out an action it returned (:class:`ActionFailed`: a sweep begun
           half-way, a message not sent, a worker not restarted), so the world no longer is
           what the machine believes.  No event is legal there (its row of the table is
           empty); :attr:`GCCycle.broken` names the phase it broke in, the action or event and
           the cause, and the shell drains and exits (``ExitCode.CYCLE_BROKEN``).

Which event is legal in which phase is the table :data:`TRANSITIONS`; any other combination
raises :class:`IllegalTransition` naming both, *before* any state changes, so the shell can
refuse a peer's untimely message without harm.  A worker is **waited on** only while it is up
and pending; one silent for longer than ``dead_after_s`` (up or pending) is killed, and its
death removes it from every pending set: no worker is waited on forever.  A worker that has
not said hello yet is still starting (a spawned interpreter importing numpy and zmq, niced,
which on a loaded host takes seconds): it is killed only after ``start_after_s`` — at least
``dead_after_s`` — like systemd's start timeout beside its watchdog, so that a short
``dead_after_s`` cannot kill every start in a loop.

**Membership** is the machine's: which slots exist (a member from ``Started`` to ``Died``),
whether each is starting, up or being killed, whether its process has said hello, when it was
last heard, and which are pending.  The supervisor (supervisor.py) owns only what a pure
machine cannot hold: the processes themselves and the zmq identity each hello bound, to route
frames; the shell asks the machine, never the supervisor, who is up.

Invariants (checked after every event, :class:`CycleInvariantBroken` if one breaks): the
pending set is empty in ``IDLE``, holds only up mutators in ``MARK`` and only up sweepers in
``SWEEP``; at most one measurement is outstanding, and only the one the phase asks for;
``sweepgen`` only grows, by 2 per cycle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from sweeperd.daemon.events import (
    MEASUREMENT_OF,
    Action,
    ActionFailed,
    BeginSweep,
    Died,
    EndCycle,
    Event,
    GcRequested,
    GiveUp,
    HeapMeasured,
    Heard,
    Hello,
    Kill,
    LiveMeasured,
    Marked,
    MeasureHeap,
    MeasureLive,
    MeasureSweep,
    Recover,
    Restart,
    SendMark,
    SendResume,
    SendSweep,
    Slot,
    Started,
    Stopping,
    SweepMeasured,
    SweepMissed,
    Swept,
    Tick,
)
from sweeperd.pacing import gcpace
from sweeperd.pacing.gclimit import GCCPULimiter
from sweeperd.roles import Role

__all__ = [
    "Action",
    "ActionFailed",
    "BeginSweep",
    "Died",
    "EndCycle",
    "Event",
    "GcRequested",
    "GiveUp",
    "HeapMeasured",
    "Heard",
    "Hello",
    "Kill",
    "LiveMeasured",
    "Marked",
    "MeasureHeap",
    "MeasureLive",
    "MeasureSweep",
    "Recover",
    "Restart",
    "Role",
    "SendMark",
    "SendResume",
    "SendSweep",
    "Slot",
    "Started",
    "Stopping",
    "SweepMeasured",
    "SweepMissed",
    "Swept",
    "Tick",
]


class Phase(StrEnum):
    IDLE = "idle"
    MARK = "mark"
    SWEEP = "sweep"
    BROKEN = "broken"


class MemberState(Enum):
    STARTING = "starting"  # its process was started; it has not said hello
    UP = "up"
    KILLING = "killing"  # it was silent too long and is being killed


class IllegalTransition(RuntimeError):
    """An event that is not legal in the current phase (or for that worker)."""


class CycleInvariantBroken(AssertionError):
    """The machine's own state is inconsistent: a bug, never a peer's doing."""


@dataclass(frozen=True)
class Broken:
    """Why the machine went BROKEN: the phase it was in, what failed there and how."""

    phase: Phase  # the phase the machine was in when it broke
    what: str  # the action that failed ("action BeginSweep") or the event being handled
    cause: str

    def __str__(self) -> str:
        return f"{self.what} failed in phase {self.phase.value}: {self.cause}"


# --- the machine ------------------------------------------------------------------------------


def _ns(t: float) -> int:
    """Seconds of the shell's monotonic clock as the limiter's integer nanoseconds."""
    return int(t * 1e9)



@dataclass(frozen=True)
class Params:
    gogc: int = 100
    min_goal_bytes: int = 4 << 20
    memory_limit_bytes: int = 0  # 0: no limit (the heap goal is GOGC's alone)
    nsweepers: int = 1  # shards per sweep: one per configured sweeper slot
    dead_after_s: float = 5.0
    start_after_s: float = 30.0  # silence allowed before hello (the larger of it and dead_after)
    trigger_check_s: float = 0.02
    restart_backoff_s: float = 0.1  # the wait before a slot's second restart in the window
    restart_backoff_max_s: float = 5.0
    max_deaths: int = 20  # of one role within death_window_s, before giving up
    max_memory_deaths: int = 3  # deaths of memory (any role) within death_window_s: give up
    death_window_s: float = 60.0
    limiter_procs: int = 1  # the GC CPU limiter's Ps: one per mutator (pacing/gclimit.py)


@dataclass
class Member:
    state: MemberState
    last_heard: float
    greeted: bool = False  # its process said hello (UP, or KILLING after it had)


@dataclass
class GCCycle:
    params: Params
    sweepgen: int
    now: float = 0.0
    phase: Phase = Phase.IDLE
    cycles: int = 0
    members: dict[Slot, Member] = field(default_factory=dict)
    pending: set[Slot] = field(default_factory=set)
    force: bool = False
    stopping: bool = False
    awaiting: type | None = None  # the *Measured event asked for and not yet answered
    goal_bytes: int = 0
    trigger_bytes: int = 0
    sweep_pages_per_byte: float = 0.0
    marked_bytes: int = 0  # reported by this cycle's marks so far
    live_bytes: int = 0  # what the last completed mark found live (Go's /gc/heap/live)
    phase_started: float = 0.0
    last_heap_check: float = -math.inf
    deaths: dict[Slot, list[float]] = field(default_factory=dict)  # within the window
    memory_deaths: list[float] = field(default_factory=list)  # deaths of memory, in the window
    restart_at: dict[Slot, float] = field(default_factory=dict)  # restarts waiting out backoff
    broken: Broken | None = None  # set when the machine went BROKEN
    limiter: GCCPULimiter | None = None  # Go's GC CPU limiter over the marks (made at start)

    def __post_init__(self) -> None:
        p = self.params
        self.goal_bytes = self.goal_bytes or gcpace.heap_goal(0, p.gogc, p.min_goal_bytes,
                                                              p.memory_limit_bytes)
        self.trigger_bytes = self.trigger_bytes or gcpace.initial_trigger(self.goal_bytes)
        self.phase_started = self.now
        if self.limiter is None:  # marks stop the world: all of a mark is GC time
            self.limiter = GCCPULimiter(max(1, p.limiter_procs), last_update=_ns(self.now),
                                        background_utilization=1.0)

    # --- entry point ---------------------------------------------------------------------

    def handle(self, ev: Event) -> list[Action]:
        handler = TRANSITIONS[self.phase].get(type(ev))
        if handler is None:
            raise IllegalTransition(f"{type(ev).__name__} is not legal in phase {self.phase}")
        if type(ev) in MEASUREMENT_OF.values() and self.awaiting is not type(ev):
            raise IllegalTransition(f"{type(ev).__name__} was not asked for")
        now = getattr(ev, "now", None)
        if now is not None:
            self.now = max(self.now, float(now))
            self._limiter().update(_ns(self.now))
        try:
            actions = handler(self, ev)
            self._check()
        except CycleInvariantBroken as e:
            self._break(f"event {type(ev).__name__}", f"invariant broken: {e}")
            raise
        return actions

    def _break(self, what: str, cause: str) -> None:
        """Go BROKEN (the ``broken`` edge), keeping the first cause: nothing waits any more."""
        if self.broken is None:
            self.broken = Broken(self.phase, what, cause)
        self.phase = EDGES.get((self.phase, "broken"), Phase.BROKEN)
        self.phase_started = self.now
        self.pending.clear()
        self.awaiting = None

    def greeted(self) -> frozenset[Slot]:
        """The members whose process has said hello (the status's ``alive`` workers)."""
        return frozenset(s for s, m in self.members.items() if m.greeted)

    def up(self, role: Role) -> tuple[Slot, ...]:
        return tuple(sorted(s for s, m in self.members.items()
                            if s.role == role and m.state is MemberState.UP))

    # --- common to every phase ---------------------------------------------------------

    def _member(self, slot: Slot, *states: MemberState) -> Member:
        m = self.members.get(slot)
        if m is None or (states and m.state not in states):
            got = "not a member" if m is None else m.state.value
            raise IllegalTransition(f"{slot} is {got}")
        return m

    def _on_started(self, ev: Started) -> list[Action]:
        if ev.slot in self.members:
            raise IllegalTransition(f"{ev.slot} started twice")
        self.members[ev.slot] = Member(MemberState.STARTING, self.now)
        return []

    def _on_hello(self, ev: Hello) -> list[Action]:
        m = self._member(ev.slot, MemberState.STARTING)
        m.state, m.last_heard, m.greeted = MemberState.UP, self.now, True
        if ev.slot.role is Role.SWEEPER and self.phase is Phase.SWEEP:
            self.pending.add(ev.slot)  # a replacement joins the running sweep
            return [SendSweep((ev.slot,), self.sweepgen)]
        if ev.slot.role is Role.MUTATOR and self.phase is not Phase.MARK:
            return [SendResume((ev.slot,), self.sweepgen, self.sweep_pages_per_byte)]
        return []

    def _on_heard(self, ev: Heard) -> list[Action]:
        if ev.stats_of is not None and ev.stats_of is not ev.slot.role:
            raise IllegalTransition(f"{ev.slot} sent a {ev.stats_of}'s figures")
        m = self._member(ev.slot, MemberState.UP, MemberState.KILLING)
        if m.state is MemberState.UP:  # (a frame in flight from one being killed: no news)
            m.last_heard = max(m.last_heard, ev.now)  # a beat may be older than now
        return []

    def _on_died(self, ev: Died) -> list[Action]:
        self._member(ev.slot)
        del self.members[ev.slot]
        self.pending.discard(ev.slot)
        out: list[Action] = [Recover(ev.slot)]
        if not self.stopping:
            out += self._after_death(ev.slot, ev.memory)
        if self.phase is Phase.MARK:
            out += self._mark_done_if_none_pending()
        return out

    def _on_gc(self, ev: GcRequested) -> list[Action]:
        self.force = True
        return []

    def _on_action_failed(self, ev: ActionFailed) -> list[Action]:
        self._break(f"action {ev.action}", ev.cause)
        return []

    def _on_stopping(self, ev: Stopping) -> list[Action]:
        self.stopping = True
        return []

    def _after_death(self, slot: Slot, memory: bool = False) -> list[Action]:
        """Restart at once the first time in the window, then with doubling waits; give up
        when the role has died more than ``max_deaths`` times in the window, or workers died
        of memory more than ``max_memory_deaths`` times (a replacement would die the same)."""
        p = self.params
        since = self.now - p.death_window_s
        if memory:
            self.memory_deaths = [t for t in self.memory_deaths if t > since] + [self.now]
            if len(self.memory_deaths) > p.max_memory_deaths:
                self.stopping = True
                return [GiveUp(slot.role, len(self.memory_deaths), p.death_window_s, True)]
        mine = [t for t in self.deaths.get(slot, []) if t > since] + [self.now]
        self.deaths[slot] = mine
        role_deaths = sum(1 for s, ts in self.deaths.items() if s.role is slot.role
                          for t in ts if t > since)
        if role_deaths > p.max_deaths:
            self.stopping = True
            return [GiveUp(slot.role, role_deaths, p.death_window_s)]
        if len(mine) == 1:
            return [Restart(slot)]
        wait = min(p.restart_backoff_max_s, p.restart_backoff_s * 2 ** (len(mine) - 2))
        self.restart_at[slot] = self.now + wait
        return []

    def _supervise(self) -> list[Action]:
        """Each tick: restarts whose wait is over, then kills of the silent."""
        due = sorted(s for s, t in self.restart_at.items() if t <= self.now)
        out: list[Action] = []
        for s in due:
            del self.restart_at[s]
            if not self.stopping:
                out.append(Restart(s))
        return out + self._kill_silent()

    def _kill_silent(self) -> list[Action]:
        out: list[Action] = []
        for slot, m in sorted(self.members.items()):
            silent = self.now - m.last_heard
            limit = self.params.dead_after_s
            if m.state is MemberState.STARTING:
                limit = max(limit, self.params.start_after_s)
            if m.state is not MemberState.KILLING and silent > limit:
                m.state = MemberState.KILLING
                self.pending.discard(slot)
                out.append(Kill(slot, silent))
        if out and self.phase is Phase.MARK:
            out += self._mark_done_if_none_pending()
        return out

    def _goto(self, edge: str) -> None:
        nxt = EDGES.get((self.phase, edge))
        if nxt is None:
            raise CycleInvariantBroken(f"no edge {edge!r} out of phase {self.phase}")
        self.phase, self.phase_started = nxt, self.now

    def _limiter(self) -> GCCPULimiter:
        assert self.limiter is not None  # made in __post_init__
        return self.limiter

    def _gc_transition(self, on: bool) -> None:
        """The mark starts (``on``) or ends: the limiter's GC state follows it."""
        lim, now = self._limiter(), _ns(self.now)
        if lim.gc_enabled != on:
            lim.start_gc_transition(on, now)
            lim.finish_gc_transition(now)

    # --- IDLE ----------------------------------------------------------------------------

    def _idle_tick(self, ev: Tick) -> list[Action]:
        out = self._supervise()
        if self.force:
            return out + self._begin_mark()
        if self.now - self.last_heap_check >= self.params.trigger_check_s:
            self.last_heap_check = self.now
            self.awaiting = HeapMeasured
            out.append(MeasureHeap())
        return out

    def _heap_measured(self, ev: HeapMeasured) -> list[Action]:
        self.awaiting = None
        lim = self._limiter()
        due = gcpace.should_trigger(ev.objects_bytes, ev.headroom_bytes, ev.heap_bytes,
                                    self.trigger_bytes)
        start = gcpace.should_trigger(ev.objects_bytes, ev.headroom_bytes, ev.heap_bytes,
                                      self.trigger_bytes, not lim.admits())
        lim.hold(_ns(self.now), due and not start)
        return self._begin_mark() if start else []

    def _begin_mark(self) -> list[Action]:
        forced, self.force = self.force, False
        self._goto("trigger")
        self._limiter().hold(_ns(self.now), False)
        self._gc_transition(True)
        self.pending = set(self.up(Role.MUTATOR))
        self.marked_bytes = 0
        out: list[Action] = [SendMark(tuple(sorted(self.pending)), self.sweepgen + 2, forced)]
        return out + self._mark_done_if_none_pending()

    # --- MARK ----------------------------------------------------------------------------

    def _mark_tick(self, ev: Tick) -> list[Action]:
        return self._supervise()

    def _on_marked(self, ev: Marked) -> list[Action]:
        if ev.slot.role is not Role.MUTATOR:
            raise IllegalTransition(f"{ev.slot} is not a mutator: it cannot mark")
        if ev.slot not in self.pending or ev.cycle != self.sweepgen + 2:
            raise IllegalTransition(f"{ev.slot} marked for cycle {ev.cycle} unasked")
        self.members[ev.slot].last_heard = self.now
        self.pending.discard(ev.slot)
        self.marked_bytes += ev.marked_bytes
        return self._mark_done_if_none_pending()

    def _mark_done_if_none_pending(self) -> list[Action]:
        if self.pending or self.awaiting is not None:
            return []
        self.awaiting = LiveMeasured
        return [MeasureLive(self.marked_bytes)]

    def _live_measured(self, ev: LiveMeasured) -> list[Action]:
        self.awaiting = None
        p = self.params
        live = max(0, ev.live_bytes)
        self.live_bytes = live
        self.goal_bytes = gcpace.heap_goal(live, p.gogc, p.min_goal_bytes,
                                           p.memory_limit_bytes)
        self.trigger_bytes = gcpace.trigger(live, self.goal_bytes)
        self.sweep_pages_per_byte = gcpace.sweep_pages_per_byte(
            max(0, ev.in_use_pages), self.trigger_bytes, live)
        self.sweepgen += 2
        self._goto("marked")
        self._gc_transition(False)
        sweepers = self.up(Role.SWEEPER)
        self.pending = set(sweepers)
        return [BeginSweep(self.sweepgen, max(1, p.nsweepers), self.goal_bytes,
                           self.trigger_bytes),
                SendSweep(sweepers, self.sweepgen),
                SendResume(self.up(Role.MUTATOR), self.sweepgen, self.sweep_pages_per_byte)]

    # --- SWEEP ---------------------------------------------------------------------------

    def _sweep_tick(self, ev: Tick) -> list[Action]:
        out = self._supervise()
        if not self.pending and self.awaiting is None:
            self.awaiting = SweepMeasured
            out.append(MeasureSweep())
        return out

    def _on_swept(self, ev: Swept) -> list[Action]:
        if ev.slot.role is not Role.SWEEPER:
            raise IllegalTransition(f"{ev.slot} is not a sweeper: it cannot report a sweep")
        if ev.slot not in self.pending or ev.cycle != self.sweepgen:
            raise IllegalTransition(f"{ev.slot} swept cycle {ev.cycle} unasked")
        self.members[ev.slot].last_heard = self.now
        self.pending.discard(ev.slot)
        return []

    def _sweep_measured(self, ev: SweepMeasured) -> list[Action]:
        self.awaiting = None
        if self.pending or ev.remaining_pages or ev.in_flight or ev.unfinished:
            return []
        if ev.missed:
            return [SweepMissed()]  # swept by the coordinator; the next tick measures again
        self.cycles += 1
        seconds = self.now - self.phase_started
        self._goto("terminated")
        return [EndCycle(self.cycles, seconds)]

    # --- invariants ----------------------------------------------------------------------

    def _check(self) -> None:
        want = {Phase.IDLE: None, Phase.MARK: Role.MUTATOR, Phase.SWEEP: Role.SWEEPER,
                Phase.BROKEN: None}[self.phase]
        for slot in self.pending:
            m = self.members.get(slot)
            if want is None or slot.role is not want or m is None or m.state is not (
                    MemberState.UP):
                raise CycleInvariantBroken(f"{slot} pending in phase {self.phase}")
        allowed = {Phase.IDLE: HeapMeasured, Phase.MARK: LiveMeasured,
                   Phase.SWEEP: SweepMeasured, Phase.BROKEN: None}[self.phase]
        if self.awaiting not in (None, allowed):
            raise CycleInvariantBroken(f"awaiting {self.awaiting} in phase {self.phase}")


Handler = Callable[[GCCycle, Event], list[Action]]

_COMMON: dict[type, Handler] = {
    Started: GCCycle._on_started,  # type: ignore[dict-item]
    Hello: GCCycle._on_hello,  # type: ignore[dict-item]
    Heard: GCCycle._on_heard,  # type: ignore[dict-item]
    Died: GCCycle._on_died,  # type: ignore[dict-item]
    GcRequested: GCCycle._on_gc,  # type: ignore[dict-item]
    Stopping: GCCycle._on_stopping,  # type: ignore[dict-item]
    ActionFailed: GCCycle._on_action_failed,  # type: ignore[dict-item]
}

#: Which event is legal in which phase, and what handles it.
TRANSITIONS: dict[Phase, dict[type, Handler]] = {
    Phase.IDLE: {**_COMMON, Tick: GCCycle._idle_tick,  # type: ignore[dict-item]
                 HeapMeasured: GCCycle._heap_measured},  # type: ignore[dict-item]
    Phase.MARK: {**_COMMON, Tick: GCCycle._mark_tick,  # type: ignore[dict-item]
                 Marked: GCCycle._on_marked,  # type: ignore[dict-item]
                 LiveMeasured: GCCycle._live_measured},  # type: ignore[dict-item]
    Phase.SWEEP: {**_COMMON, Tick: GCCycle._sweep_tick,  # type: ignore[dict-item]
                  Swept: GCCycle._on_swept,  # type: ignore[dict-item]
                  SweepMeasured: GCCycle._sweep_measured},  # type: ignore[dict-item]
    Phase.BROKEN: {},  # terminal: every event is illegal
}

#: The only phase changes there are.
EDGES: dict[tuple[Phase, str], Phase] = {
    (Phase.IDLE, "trigger"): Phase.MARK,
    (Phase.MARK, "marked"): Phase.SWEEP,
    (Phase.SWEEP, "terminated"): Phase.IDLE,
    (Phase.IDLE, "broken"): Phase.BROKEN,
    (Phase.MARK, "broken"): Phase.BROKEN,
    (Phase.SWEEP, "broken"): Phase.BROKEN,
}
