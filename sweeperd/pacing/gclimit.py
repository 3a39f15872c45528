"""The GC CPU limiter: Go's ``gcCPULimiterState`` (runtime/mgclimit.go, go1.19 and go1.21).

Theory of operation
-------------------
A memory limit the live heap nears makes the GC run back to back (pacing/gcpace.py): left
alone, the program would do nothing but collect (a "death spiral").  Go 1.19 bounds that: a
**leaky bucket** of GC CPU time, of capacity ``capacityPerProc`` (1 s) per P.  Every update
adds the window's GC CPU time and takes away its mutator CPU time
(``accumulate(mutatorTime, gcTime)``: ``fill += gcTime - mutatorTime``, clamped to
``0..capacity``; what spills over the top is ``overflow``).  GC CPU time is the mark workers'
background share while the GC is on (``gcBackgroundUtilization`` of the window, 0.25 in Go)
plus the mark assists (``addAssistTime``); idle time (``addIdleTime``) counts as neither.
The bucket fills only while the GC takes more than 50% of the CPU, so it is **enabled** (full)
when the GC has taken more than half the CPU for long enough to gain 1 s per P on the
mutators; any update that drains it disables it again.  While enabled Go stops mark assists:
the GC cannot take more, and the heap is allowed past the memory limit's goal.  A GC on/off
transition (``startGCTransition``/``finishGCTransition``) counts the stop-the-world between
them as GC time on every P.

In sweeperd the mutators do the marking, with the world stopped (daemon/cycle.py's MARK): the
whole of a mark is GC time on every mutator, so the coordinator runs this limiter with
``background_utilization = 1.0`` and one "P" per mutator.  A world-stopped mark has no assists
to stop, so sweeperd caps the GC where it can, before a mark: :meth:`GCCPULimiter.admits` lets
the GOGC/limit trigger start a mark only when the bucket has room for one as long as the last
(at most half the bucket, so that a mark longer than 1 s cannot stall the GC for good); a
trigger refused waits (:meth:`hold`) and the heap grows past it, as Go's does past its goal.
In steady state that is the 50% cap: each mark waits for as much mutator time as it took.  The
heap-full trigger is never held (a fixed arena cannot grow), nor a ``gc`` request.
Beside Go's state it counts :attr:`enabled_ns`, wall-clock nanoseconds during which GC work was
capped — Go's ``enabled``, or a trigger held — charged by the update that ends each window:
the ``sweeperd_gc_limiter_enabled_seconds_total`` counter (Go has only
``/gc/limiter/last-enabled:gc-cycle``).

Pure: times are integer nanoseconds passed in (any monotonic origin); no clock is read.

Invariants: ``0 <= fill <= capacity``; ``enabled`` implies ``fill == capacity``; ``overflow``
and ``enabled_ns`` only grow; a time earlier than the last update changes nothing (Go:
``now < lastUpdate`` returns).
"""

from __future__ import annotations

from dataclasses import dataclass

CAPACITY_PER_PROC_NS = 1_000_000_000  # Go's capacityPerProc: 1 s of CPU per P
UPDATE_PERIOD_NS = 10_000_000  # Go's gcCPULimiterUpdatePeriod: 10 ms
GO_BACKGROUND_UTILIZATION = 0.25  # Go's gcBackgroundUtilization (mgcpacer.go)


class LimiterError(RuntimeError):
    """A transition out of order (Go throws): starting one while another is open, finishing
    one never started, or turning the GC to the state it is already in."""


@dataclass
class GCCPULimiter:
    """Go's gcCPULimiterState over ``nprocs`` Ps, from time ``last_update`` (ns)."""

    nprocs: int
    last_update: int = 0
    background_utilization: float = GO_BACKGROUND_UTILIZATION
    fill: int = 0  # CPU-ns in the bucket
    overflow: int = 0  # CPU-ns of GC time that spilled over a full bucket, ever
    enabled: bool = False  # the bucket is full: GC work is capped (Go: limiting())
    gc_enabled: bool = False  # a GC cycle's mark is on
    transitioning: bool = False
    assist_pool: int = 0  # CPU-ns of assists since the last update (addAssistTime)
    idle_pool: int = 0  # CPU-ns of idle Ps since the last update (addIdleTime)
    enabled_ns: int = 0  # wall-clock ns spent enabled (sweeperd's, not Go's)
    enabled_times: int = 0  # how many times it went from disabled to enabled
    held: bool = False  # sweeperd: a trigger is being held back (see :meth:`hold`)
    mark_started: int = 0  # ns the GC last turned on
    last_mark_ns: int = 0  # CPU-ns of the last whole mark (wall time times nprocs)

    def __post_init__(self) -> None:
        if self.nprocs < 1:
            raise ValueError(f"nprocs must be at least 1, got {self.nprocs}")

    @property
    def capacity(self) -> int:
        """CPU-ns the bucket holds: 1 s per P."""
        return self.nprocs * CAPACITY_PER_PROC_NS

    def limiting(self) -> bool:
        """Is GC work capped now?"""
        return self.enabled

    def need_update(self, now: int) -> bool:
        """More than :data:`UPDATE_PERIOD_NS` since the last update (Go's needUpdate)."""
        return now - self.last_update > UPDATE_PERIOD_NS

    def add_assist_time(self, cpu_ns: int) -> None:
        self.assist_pool += cpu_ns

    def add_idle_time(self, cpu_ns: int) -> None:
        self.idle_pool += cpu_ns

    def update(self, now: int) -> None:
        """Account the window since the last update (Go's update; skipped, as Go's tryLock
        fails, during a transition)."""
        if self.transitioning:
            return
        self._update(now)

    def start_gc_transition(self, enable_gc: bool, now: int) -> None:
        """The GC turns on (mark starts) or off (mark ends) at ``now``; the world is stopped
        until :meth:`finish_gc_transition`."""
        if self.transitioning:
            raise LimiterError("a GC transition is already under way")
        if self.gc_enabled == enable_gc:
            raise LimiterError("transitioning GC to the same state as before")
        self._update(now)
        if enable_gc:
            self.mark_started = now
        else:
            self.last_mark_ns = max(0, now - self.mark_started) * self.nprocs
        self.gc_enabled = enable_gc
        self.transitioning = True

    def finish_gc_transition(self, now: int) -> None:
        """The world restarts: the stop-the-world since the last update was GC time on every
        P."""
        if not self.transitioning:
            raise LimiterError("finish_gc_transition called without starting one")
        if now >= self.last_update:
            self._charge_enabled(now)
            self._accumulate(0, (now - self.last_update) * self.nprocs)
            self.last_update = now
        self.transitioning = False

    def reset_capacity(self, now: int, nprocs: int) -> None:
        """GOMAXPROCS changed (Go's resetCapacity): the bucket is resized, its fill clamped."""
        if nprocs < 1:
            raise ValueError(f"nprocs must be at least 1, got {nprocs}")
        self._update(now)
        self.nprocs = nprocs
        if self.fill > self.capacity:
            self.fill = self.capacity
            self._enable()
        elif self.fill < self.capacity:
            self.enabled = False

    def admits(self) -> bool:
        """sweeperd's cap: may a mark start now?  Yes while the bucket has room for a mark as
        long as the last one (at most half the bucket); no while Go's limiter is on."""
        need = min(self.last_mark_ns, self.capacity // 2)
        return not self.enabled and self.fill + need <= self.capacity

    def hold(self, now: int, held: bool) -> None:
        """A due trigger is held back (``held``) or not, from ``now``: the time since the last
        update is charged under the old state first."""
        self.update(now)
        self.held = held

    def capping(self) -> bool:
        """Is GC work capped now (Go's limiter on, or a trigger held)?"""
        return self.enabled or self.held

    # --- Go's updateLocked and accumulate ---------------------------------------------------

    def _update(self, now: int) -> None:
        if now < self.last_update:
            return
        self._charge_enabled(now)
        window = (now - self.last_update) * self.nprocs
        self.last_update = now
        assist, self.assist_pool = self.assist_pool, 0
        idle, self.idle_pool = self.idle_pool, 0
        gc = assist
        if self.gc_enabled:
            gc += int(window * self.background_utilization)
        window -= idle
        self._accumulate(window - gc, gc)

    def _charge_enabled(self, now: int) -> None:
        if self.enabled or self.held:
            self.enabled_ns += now - self.last_update

    def _accumulate(self, mutator_ns: int, gc_ns: int) -> None:
        headroom = self.capacity - self.fill
        was_enabled = headroom == 0
        change = gc_ns - mutator_ns
        if change > 0 and headroom <= change:
            self.overflow += change - headroom
            self.fill = self.capacity
            if not was_enabled:
                self._enable()
            return
        self.fill = max(self.fill + change, 0)
        if change != 0 and was_enabled:
            self.enabled = False

    def _enable(self) -> None:
        if not self.enabled:
            self.enabled_times += 1
        self.enabled = True
