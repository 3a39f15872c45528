"""Running totals of what the workers report and what the coordinator did: the daemon's counters.

Theory of operation
-------------------
What workers *do to the heap* (pages released, spans swept, objects freed and allocated) is
not here: it is tallied in shared memory as the work is done (the heap's ``tallies``, one row
per claimer, kept when a process dies) and read as one typed
:class:`~sweeperd.runtime.heapstats.Tallies` at every publish, so a death loses none of it.
What remains here travels on the wire, typed as it was sent (``wire/protocol.py``): a
mutator's :class:`~sweeperd.wire.protocol.MutatorStats` — timings, waits and checks and its
refill histogram; its heartbeat carries its totals since it started: :class:`Totals` adds the
difference from the same worker's previous report into one running ``MutatorStats`` (its
gauge ``live_objects`` is not summed and stays 0), and forgets a worker's baseline when it
dies, its replacement starting from zero — the scavenger's
:class:`~sweeperd.wire.protocol.ScavengerStats` (gauges, kept as last reported), and what the
coordinator counts itself (deaths, errors, sweep phases, finalizers it ran).  The snapshot
and the metrics read the same Structs' fields: a figure is never renamed on its way.

One owner: the coordinator's main loop.  Other threads see only :meth:`Totals.freeze`'s
immutable copy, inside the published snapshot.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgspec

from sweeperd.daemon.events import Slot
from sweeperd.roles import Role
from sweeperd.wire.protocol import MutatorStats, ScavengerStats

SWEEP_PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (Prometheus style: ``counts[i]`` observations <= bounds[i])."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: int
    sum: float


_ZERO = MutatorStats()
# a mutator's figures that add up across reports and mutators (not the gauge live_objects;
# the histogram is summed bucket by bucket)
_SUMMED = tuple(k for k in MutatorStats.__struct_fields__
                if k not in ("live_objects", "refill_buckets"))


@dataclass
class Totals:
    mutator: MutatorStats = field(default_factory=MutatorStats)  # every mutator's, summed
    scavenger: ScavengerStats = field(default_factory=ScavengerStats)  # as last reported
    deaths: dict[Role, int] = field(default_factory=lambda: {r: 0 for r in Role})
    # ... of which of memory: the OOM killer (the cgroup's oom_kill rose) or SIGBUS
    memory_deaths: dict[Role, int] = field(default_factory=lambda: {r: 0 for r in Role})
    control_errors: dict[str, int] = field(default_factory=dict)
    internal_errors: dict[str, int] = field(default_factory=dict)
    control_requests: dict[str, dict[str, int]] = field(default_factory=dict)  # type, outcome
    last_crash: dict[Role, str] = field(default_factory=dict)  # role -> a worker's traceback
    finalizers_run: int = 0  # run by the coordinator at the end of each cycle
    sweep_phase: list[int] = field(default_factory=lambda: [0] * len(SWEEP_PHASE_BUCKETS))
    sweep_phase_n: int = 0
    sweep_phase_sum: float = 0.0
    _last: dict[Slot, MutatorStats] = field(default_factory=dict)

    def mutator_report(self, slot: Slot, stats: MutatorStats) -> None:
        """A mutator's cumulative figures (heartbeat or ``marked``)."""
        prev = self._last.get(slot, _ZERO)
        t = self.mutator
        self.mutator = msgspec.structs.replace(t, **{
            k: getattr(t, k) + getattr(stats, k) - getattr(prev, k) for k in _SUMMED},
            refill_buckets=tuple(a + b - c for a, b, c in zip(
                t.refill_buckets, stats.refill_buckets, prev.refill_buckets, strict=True)))
        self._last[slot] = stats

    def scavenger_report(self, stats: ScavengerStats) -> None:
        """The scavenger's gauges (sleep ratio, vectored, its policy's figures)."""
        self.scavenger = stats

    def died(self, slot: Slot, memory: bool = False) -> None:
        self.deaths[slot.role] += 1
        self.memory_deaths[slot.role] += memory
        self._last.pop(slot, None)  # its replacement reports from zero

    def control_error(self, reason: str) -> None:
        self.control_errors[reason] = self.control_errors.get(reason, 0) + 1

    def control_request(self, kind: str, outcome: str, n: int = 1) -> None:
        """A client request of ``kind`` (status, ping, gc, scavenge; ``invalid`` if it could not
        be decoded; ``handshake`` a CURVE client refused) ended with ``outcome`` (ok,
        coalesced, refused, error)."""
        by = self.control_requests.setdefault(kind, {})
        by[outcome] = by.get(outcome, 0) + n

    def internal_error(self, where: str) -> None:
        self.internal_errors[where] = self.internal_errors.get(where, 0) + 1

    def sweep_phase_seconds(self, seconds: float) -> None:
        i = bisect.bisect_left(SWEEP_PHASE_BUCKETS, seconds)
        for j in range(i, len(self.sweep_phase)):
            self.sweep_phase[j] += 1
        self.sweep_phase_n += 1
        self.sweep_phase_sum += seconds

    def freeze(self) -> dict[str, Any]:
        """Immutable copies of every counter, for the snapshot."""
        return {
            "mutator": self.mutator,  # (frozen Structs)
            "scavenger": self.scavenger,
            "deaths": MappingProxyType(dict(self.deaths)),
            "memory_deaths": MappingProxyType(dict(self.memory_deaths)),
            "control_errors": MappingProxyType(dict(self.control_errors)),
            "internal_errors": MappingProxyType(dict(self.internal_errors)),
            "control_requests": MappingProxyType(
                {k: MappingProxyType(dict(v)) for k, v in self.control_requests.items()}),
            "finalizers_run": self.finalizers_run,
            "sweep_phase": Histogram(SWEEP_PHASE_BUCKETS, tuple(self.sweep_phase),
                                     self.sweep_phase_n, self.sweep_phase_sum),
        }
