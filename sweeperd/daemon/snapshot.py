"""What the rest of the daemon may see of the coordinator: one immutable snapshot.

Theory of operation
-------------------
The coordinator's main loop owns all of its state.  After every step it publishes a
:class:`Snapshot` (a frozen dataclass of plain values and read-only mappings) by replacing one
attribute, an atomic store in CPython; the metrics thread, the memory sampler and ``status``
read only the latest snapshot, never the live state, so nothing they do can race the loop.

:func:`status_json` is the ``status`` reply: the snapshot plus what is read fresh from the
kernel and the shared heap at that moment (heap classes, true backing, per-process memory).
Its fields are a public contract: tools parse them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sweeperd.daemon.totals import Histogram
from sweeperd.roles import Role
from sweeperd.runtime import kernels
from sweeperd.runtime.heap import Heap
from sweeperd.runtime.heapstats import HeapStats, SweepTally, Tallies
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys.procmem import meminfo, process_memory
from sweeperd.wire.protocol import MutatorStats, ScavengerStats


@dataclass(frozen=True)
class WorkerView:
    role: Role
    id: int
    pid: int
    state: str  # "starting" until its hello, then "alive"


@dataclass(frozen=True)
class Sample:
    """The figures a thread samples about once a second (PSS costs in proportion to the
    memory each process touched)."""

    at: float  # time.monotonic()
    processes: list[dict[str, Any]]


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic() of the step that published it
    pid: int
    cycle: int
    sweepgen: int
    phase: str
    goal_bytes: int
    trigger_bytes: int
    live_bytes: int  # marked live by the last completed mark
    retain_goal_bytes: int
    workers: tuple[WorkerView, ...]
    mutator: MutatorStats  # the mutators' wire figures, summed (timings, waits, checks)
    scavenger: ScavengerStats  # the scavenger's gauges, as last reported
    deaths: Mapping[Role, int]
    control_errors: Mapping[str, int]
    internal_errors: Mapping[str, int]
    finalizers_run: int  # by the coordinator (the sweeps' own are in tallies)
    sweep_phase: Histogram
    debug: Mapping[str, Any]
    cpu_fraction_target: float
    policy: str  # the scavenger policy (config scavenger.policy)
    policy_params: Mapping[str, Any]
    tallies: Tallies  # heapstats.read_tallies at the step: what the workers did to the heap
    heap_handle: Mapping[str, Any]
    control_addr: str
    ipc_dir: str
    metrics_addr: str
    scenario: Mapping[str, Any]  # name, elapsed_s, phase, phase_name, target_live_bytes; {} if none
    memory_deaths: Mapping[Role, int] = field(default_factory=dict)  # by role: OOM killer, SIGBUS
    # client requests by type, then outcome (sweeperd_control_requests_total)
    control_requests: Mapping[str, Mapping[str, int]] = field(
        default_factory=lambda: MappingProxyType({}))
    gc_limiter_enabled_s: float = 0.0  # seconds the GC CPU limiter capped GC work (gclimit.py)
    gogc: int = 100  # Go's gcPercent: -1 is GOGC off
    memory_limit_bytes: int = 0  # resolved ("cgroup" derived at start); 0: none

    def alive(self, role: Role) -> int:
        return sum(1 for w in self.workers if w.role == role and w.state == "alive")

    def starting(self, role: Role) -> int:
        return sum(1 for w in self.workers if w.role == role and w.state == "starting")

    def pids(self) -> list[tuple[str, int, int]]:
        """(role, slot id, pid) of the coordinator and every worker."""
        return [("coordinator", 0, self.pid)] + [(w.role, w.id, w.pid) for w in self.workers]

    @property
    def swept(self) -> Mapping[str, SweepTally]:
        """Sweeps by who did them: background (sweepers and the coordinator), mutator."""
        return {"background": self.tallies.background, "mutator": self.tallies.mutator}

    def objects_freed(self) -> int:
        return self.tallies.objects_freed

    def finalizers_total(self) -> int:
        """Finalizers run: by the coordinator, and by sweeps making room in a full queue."""
        t = self.tallies
        return (self.finalizers_run + t.background.finalizers_run
                + t.mutator.finalizers_run)

    def scavenger_status(self) -> dict[str, Any]:
        """Every release, the scavenger's (and the coordinator's) and (under ``eager``) the
        freers' own, from the heap's tallies."""
        sc, on_free = self.tallies.scavenger, self.tallies.on_free
        calls = {a: n + m for (a, n), m in zip(sc.calls().items(), on_free.madvise_calls,
                                               strict=True)}
        return {
            "policy": self.policy,
            "policy_params": dict(self.policy_params),
            # what the kernel gave back (blocks of the runs, counted before each release) ...
            "released_bytes_total": sc.kernel_bytes + on_free.kernel_bytes,
            # ... and what was advised, by the books (includes never-touched free pages)
            "advised_bytes_total": (sc.pages + on_free.pages) * PAGE_SIZE,
            "release_runs_total": sc.runs + on_free.runs,
            # of those, released by whoever freed them (the eager policy)
            "released_on_free_bytes_total": on_free.kernel_bytes,
            "freed_bytes_total": self.tallies.freed_pages * PAGE_SIZE,
            # the CPU the freers spent in those releases (their thread time)
            "released_on_free_cpu_seconds_total": on_free.cpu_ns / 1e9,
            "cpu_seconds_total": sc.cpu_ns / 1e9,
            "madvise_calls_total": calls,
            "vectored": self.scavenger.vectored,
            "retain_goal_bytes": self.retain_goal_bytes,
            "policy_figures": dict(self.scavenger.policy.items()),
        }


def processes_memory(snap: Snapshot, pss_from: Sample | None = None) -> list[dict[str, Any]]:
    """RSS, PSS, private memory, descriptors and CPU of every process the snapshot names,
    labelled by role and slot (never summed: RSS counts the shared heap in each).  A process
    gone meanwhile is left out.  With ``pss_from``, PSS is not read now (it walks the page
    tables of a 16 GiB mapping) but taken from that sample (0 for a process it lacks)."""
    sampled = {p["pid"]: p["pss_bytes"] for p in pss_from.processes} if pss_from else {}
    out = []
    for role, wid, pid in snap.pids():
        pm = process_memory(pid, pss=pss_from is None)
        if pm is not None:
            out.append({"role": role, "id": wid, "pid": pid, "rss_bytes": pm.rss_bytes,
                        "pss_bytes": sampled.get(pid, 0) if pss_from else pm.pss_bytes,
                        "anon_bytes": pm.anon_bytes, "fds": pm.fds,
                        "cpu_seconds": pm.cpu_seconds})
    return out


def memory_now(heap: Heap, snap: Snapshot, sample: Sample) -> dict[str, Any]:
    """Memory as the kernel sees it now: the heap's true backing, Shmem, every process (its
    PSS from the metrics sampler's latest ``sample``, taken at most a second ago)."""
    return {"heap_backed_bytes": heap.arena_backed_bytes(),
            "metadata_backed_bytes": heap.meta_backed_bytes(),
            "system_shmem_bytes": meminfo("Shmem"),
            "processes": processes_memory(snap, pss_from=sample),
            "pss_age_s": round(time.monotonic() - sample.at, 3)}


def take_sample(snap: Snapshot) -> Sample:
    """The metrics sampler's figures (its thread): the kernel's view of the processes the
    snapshot names."""
    return Sample(time.monotonic(), processes_memory(snap))


def status_json(snap: Snapshot, hs: HeapStats, memory: dict[str, Any],
                workers_alive: int) -> dict[str, Any]:
    """The ``status`` reply: the snapshot, the heap's classes and the kernel's view now."""
    mt = snap.mutator
    alloc = snap.tallies.alloc
    alloc_s = mt.alloc_seconds
    return {
        "cycle": snap.cycle,
        "sweepgen": snap.sweepgen,
        "phase": snap.phase,
        "pid": os.getpid(),
        "sweep_engine": kernels.engine(),  # the coordinator's; each worker loads its own
        "workers": [{"role": w.role, "id": w.id, "pid": w.pid, "state": w.state}
                    for w in snap.workers],
        "workers_alive": workers_alive,
        "deaths": dict(snap.deaths),
        "memory_deaths": dict(snap.memory_deaths),
        "spans_swept": {k: v.spans for k, v in snap.swept.items()},
        "pages_swept": {k: v.pages for k, v in snap.swept.items()},
        "objects_freed": snap.objects_freed(),
        "scenario": dict(snap.scenario),
        "gc": {"gogc": "off" if snap.gogc < 0 else snap.gogc,
               "memory_limit_bytes": snap.memory_limit_bytes,
               "limiter_enabled_seconds": snap.gc_limiter_enabled_s},
        "heap": {**hs.as_dict(), "goal_bytes": snap.goal_bytes, "live_bytes": snap.live_bytes,
                 "trigger_bytes": snap.trigger_bytes,
                 "arena_backed_bytes": memory["heap_backed_bytes"],
                 "meta_backed_bytes": memory["metadata_backed_bytes"]},
        "mutators": {
            "objects_allocated": alloc.objects,
            "bytes_allocated": alloc.bytes,
            "objects_per_s_per_mutator": alloc.objects / alloc_s if alloc_s else 0.0,
            "mutators": max(1, sum(1 for w in snap.workers if w.role is Role.MUTATOR)),
            "oom_waits": mt.oom_waits,
            "lost_objects": mt.lost_objects,
            "payload_errors": mt.payload_errors,
            "objects_checked": mt.objects_checked,
        },
        "finalizers_run": snap.finalizers_total(),
        "scavenger": snap.scavenger_status(),
        "memory": memory,
        "heap_handle": dict(snap.heap_handle),
        "control_errors": dict(snap.control_errors),
        "internal_errors": dict(snap.internal_errors),
        "control_requests": {k: dict(v) for k, v in snap.control_requests.items()},
        "debug": dict(snap.debug),
        "control_addr": snap.control_addr,
        "ipc_dir": snap.ipc_dir,
        "metrics_addr": snap.metrics_addr,
    }
