"""Running totals of what the workers report and what the coordinator did: the daemon's counters.

Theory of operation
-------------------
Workers send cumulative figures (a mutator's heartbeat carries its totals since it started; the
scavenger's likewise); a sweeper's ``swept`` carries one cycle's work.  :class:`Totals` turns
them into daemon-wide counters that only grow: for cumulative reports it adds the difference
from the same worker's previous report, and forgets a worker's baseline when it dies (its
replacement starts from zero).  Work done by the coordinator itself (recovery, spans the shards
missed, FreeOSMemory without a scavenger) is added directly.

One owner: the coordinator's main loop.  Other threads see only :meth:`Totals.freeze`'s
immutable copy, inside the published snapshot.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sweeperd.daemon.cycle import Role, Slot
from sweeperd.runtime.scavenge import Released
from sweeperd.runtime.sweep import SweepStats

SWEEP_PHASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SCAVENGER_GAUGES = ("sleep_ratio", "vectored")  # reported as is, not accumulated
POLICY_FIGURE = "policy_"  # a scavenger stat so prefixed is its policy's gauge


@dataclass(frozen=True)
class SweepCounts:
    spans: int = 0
    pages: int = 0
    objects_freed: int = 0


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (Prometheus style: ``counts[i]`` observations <= bounds[i])."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: int
    sum: float


@dataclass
class Totals:
    swept: dict[str, SweepCounts] = field(
        default_factory=lambda: {"background": SweepCounts(), "mutator": SweepCounts()})
    mutator: dict[str, float] = field(default_factory=dict)
    scavenger: dict[str, float] = field(default_factory=dict)
    deaths: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in Role})
    # ... of which of memory: the OOM killer (the cgroup's oom_kill rose) or SIGBUS
    memory_deaths: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in Role})
    control_errors: dict[str, int] = field(default_factory=dict)
    internal_errors: dict[str, int] = field(default_factory=dict)
    control_requests: dict[str, dict[str, int]] = field(default_factory=dict)  # type, outcome
    last_crash: dict[str, str] = field(default_factory=dict)  # role -> a worker's traceback
    finalizers_run: int = 0
    sweep_phase: list[int] = field(default_factory=lambda: [0] * len(SWEEP_PHASE_BUCKETS))
    sweep_phase_n: int = 0
    sweep_phase_sum: float = 0.0
    _last: dict[Slot, dict[str, float]] = field(default_factory=dict)

    def _add_swept(self, by: str, spans: int, pages: int, objects_freed: int) -> None:
        o = self.swept[by]
        self.swept[by] = SweepCounts(o.spans + spans, o.pages + pages,
                                     o.objects_freed + objects_freed)

    def sweeper_report(self, stats: dict[str, float]) -> None:
        """One cycle's work of a background sweeper (its ``swept`` message)."""
        self._add_swept("background", int(stats.get("spans", 0)), int(stats.get("pages", 0)),
                        int(stats.get("objects_freed", 0)))
        self.finalizers_run += int(stats.get("finalizers_run", 0))

    def coordinator_swept(self, st: SweepStats) -> None:
        """Sweeping done by the coordinator itself (recovery, missed spans)."""
        self._add_swept("background", st.spans, st.pages, st.objects_freed)
        self.finalizers_run += st.finalizers_run

    def mutator_report(self, slot: Slot, stats: dict[str, float]) -> None:
        """A mutator's cumulative figures (heartbeat or ``marked``)."""
        prev = self._last.get(slot, {})
        d = {k: v - prev.get(k, 0) for k, v in stats.items()}
        self._add_swept("mutator", int(d.get("spans_swept", 0)), int(d.get("pages_swept", 0)),
                        int(d.get("objects_freed", 0)))
        self.finalizers_run += int(d.get("finalizers_run", 0))
        for k, v in d.items():
            if k != "live_objects":
                self.mutator[k] = self.mutator.get(k, 0) + v
        self._last[slot] = dict(stats)

    def scavenger_report(self, slot: Slot, stats: dict[str, float]) -> None:
        prev = self._last.get(slot, {})
        for k, v in stats.items():
            if k in SCAVENGER_GAUGES or k.startswith(POLICY_FIGURE):
                self.scavenger[k] = v
            else:
                self.scavenger[k] = self.scavenger.get(k, 0) + v - prev.get(k, 0)
        self._last[slot] = dict(stats)

    def coordinator_released(self, r: Released, madvise_calls: dict[str, int]) -> None:
        """A release done by the coordinator (a dead scavenger's runs, FreeOSMemory)."""
        t = self.scavenger
        t["released_pages"] = t.get("released_pages", 0) + r.pages
        t["release_runs"] = t.get("release_runs", 0) + r.runs
        t["released_kernel_bytes"] = t.get("released_kernel_bytes", 0) + r.kernel_bytes
        for k, v in madvise_calls.items():
            t[f"madvise_{k}"] = t.get(f"madvise_{k}", 0) + v

    def died(self, slot: Slot, memory: bool = False) -> None:
        self.deaths[slot.role.value] += 1
        self.memory_deaths[slot.role.value] += memory
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

    def madvise_calls(self) -> dict[str, int]:
        return {k[8:]: int(v) for k, v in self.scavenger.items() if k.startswith("madvise_")}

    def freeze(self) -> dict[str, Any]:
        """Immutable copies of every counter, for the snapshot."""
        return {
            "swept": MappingProxyType(dict(self.swept)),
            "mutator": MappingProxyType(dict(self.mutator)),
            "scavenger": MappingProxyType(dict(self.scavenger)),
            "madvise_calls": MappingProxyType(self.madvise_calls()),
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
