"""Prometheus metrics, served by the coordinator process from its published snapshot.

Theory of operation
-------------------
The HTTP server's thread never touches the coordinator's live state.  A scrape reads four
things, none of them owned by the main loop:

* the latest :class:`~sweeperd.daemon.snapshot.Snapshot` (counters, workers, goals), which the
  main loop replaces after every step;
* the latest :class:`Sample` of the figures that cost in proportion to the memory a process
  touched (PSS from ``smaps_rollup``, ~0.1 s for a mutator at 16 GiB), taken by a sampler
  thread every ``SAMPLE_S`` or less often when a sample costs more (its age exported);
* the heap's classes, and the bytes being released and cached, fresh from its running
  counters in shared memory (O(1): a scrape costs the same at any heap size);
* the kernel, read fresh: the arena's and metadata's ``st_blocks`` and ``Shmem`` (a
  :class:`Kernel` reader over the regions' descriptors, which stay open until the server is
  shut down).

So prometheus-client runs in one process only (no multiprocess directory), and label sets are
fixed (role, id, by, state, reason, advice; ``id`` is a worker's slot, bounded by the config,
never a pid): cardinality does not grow with spans, pids or cycles.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sweeperd.daemon import httpserve
from sweeperd.daemon.snapshot import Sample, Snapshot
from sweeperd.roles import Role
from sweeperd.runtime import kernels
from sweeperd.runtime.heapstats import Books
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.workload.mutator import ALLOC_BUCKETS

SAMPLE_S = 1.0
POLICY_FIGURES = {
    "decay_npages_limit": "jemalloc-decay: free pages allowed to stay backed (npages_limit).",
    "release_rate_counter_pages": "gperftools-rate: pages to free before the next release "
                                  "(scavenge_counter_).",
    "purge_delay_expired_pages": "mimalloc-delay: free pages past their purge delay.",
    "hugepage_kept_bytes": "hugepage-aware: free backed bytes kept in partly used huge pages.",
    "hpa_ndirty_max_pages": "jemalloc-hpa: dirty pages allowed (dirty_mult x active pages).",
    "tcmalloc_release_credit_bytes": "tcmalloc-background: bytes the rate allows and not yet "
                                     "released (below 0: released ahead, as TCMalloc's "
                                     "extra_bytes_released).",
}
ADVICES = ("REMOVE", "REMOVE_vectored", "DONTNEED", "FREE", "NOHUGEPAGE", "HUGEPAGE")


@dataclass(frozen=True)
class Kernel:
    """Fresh reads of the kernel's figures: the heap's true backing and the system's Shmem."""

    arena_backed: Callable[[], int]
    meta_backed: Callable[[], int]
    shmem: Callable[[], int]
    books: Callable[[], Books]  # not the kernel's, but as fresh and as cheap: one moment's


class Sampler:
    """Takes the expensive figures off the scrape path: a daemon thread, one sample a period.

    The period is ``period`` (one second) or, when a sample costs more, ``COST_SHARE`` times
    its cost: reading PSS walks every page-table entry of each process, about 0.1 s for a
    mutator that touched 16 GiB of the heap, and that walk must not take a core's tenth.
    The cost is the thread's CPU time (user and system: the kernel's walk is charged to the
    reader), not the wall clock's: on a loaded machine a sample waits for a core, which
    costs the machine nothing, and must not stretch the period (a 50 ms wait made it 2.5 s)."""

    COST_SHARE = 50  # the sampler spends at most 1/50 of one core

    def __init__(self, take: Callable[[], Sample], period: float = SAMPLE_S,
                 clock: Callable[[], float] = time.thread_time) -> None:
        self.take = take
        self.period = period
        self.clock = clock
        self.wait_s = period
        self.latest = self._take()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-sampler", daemon=True)

    def _take(self) -> Sample:
        t = self.clock()
        s = self.take()
        self.wait_s = max(self.period, self.COST_SHARE * (self.clock() - t))
        return s

    def _loop(self) -> None:
        while not self._stop.wait(self.wait_s):
            self.latest = self._take()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _counter(name: str, help_: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_, value=value)


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, value=value)


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], sample: Callable[[], Sample],
                 kernel: Kernel) -> None:
        self.snapshot = snapshot
        self.sample = sample
        self.kernel = kernel

    def collect(self) -> Iterator[Metric]:
        snap, sample = self.snapshot(), self.sample()
        yield from self._cycle(snap)
        yield from self._heap(snap, sample)
        yield from self._processes(sample)
        yield from self._scavenger(snap)
        yield from self._workers(snap)

    def _cycle(self, s: Snapshot) -> Iterator[Metric]:
        yield _counter("sweeperd_gc_cycles", "Completed GC cycles.", s.cycle)
        yield _counter("sweeperd_gc_limiter_enabled_seconds", "Seconds the GC CPU limiter "
                       "capped GC work (Go's mgclimit.go: marks over half the CPU; the trigger "
                       "held and the heap let past its goal).", s.gc_limiter_enabled_s)
        yield _gauge("sweeperd_gc_gogc", "GOGC (Go's gcPercent) of the next mark's goal; -1: "
                     "GOGC off (the goal is the memory limit's alone).", s.gogc)
        spans = CounterMetricFamily("sweeperd_sweep_spans", "Spans swept, by who swept them.",
                                    labels=["by"])
        pages = CounterMetricFamily("sweeperd_sweep_pages", "Pages swept, by who swept them.",
                                    labels=["by"])
        for by, st in s.swept.items():
            spans.add_metric([by], st.spans)
            pages.add_metric([by], st.pages)
        yield spans
        yield pages
        yield _counter("sweeperd_sweep_objects_freed", "Objects freed by sweeping.",
                       s.objects_freed())
        h = s.sweep_phase
        yield HistogramMetricFamily(
            "sweeperd_sweep_phase_seconds", "Duration of sweep phases.",
            buckets=[(floatToGoString(b), c) for b, c in zip(h.bounds, h.counts, strict=True)]
            + [("+Inf", h.total)], sum_value=h.sum)
        yield _counter("sweeperd_finalizers_run", "Finalizers run.", s.finalizers_total())
        yield _counter("sweeperd_mutator_objects_allocated", "Objects allocated by mutators.",
                       s.tallies.alloc.objects)
        yield _counter("sweeperd_mutator_allocated_bytes", "Bytes allocated by mutators.",
                       s.tallies.alloc.bytes)
        counts = s.mutator.refill_buckets[:len(ALLOC_BUCKETS)]  # (the last: +Inf)
        cum = list(itertools.accumulate(counts))
        yield HistogramMetricFamily(
            "sweeperd_mutator_alloc_seconds", "Time of each mutator refill (an mcache miss: "
            "mcentral.cacheSpan with its on-demand sweeping, and the sweep credit it pays).",
            buckets=[(floatToGoString(b), c) for b, c in zip(ALLOC_BUCKETS, cum, strict=True)]
            + [("+Inf", s.mutator.refills)],
            sum_value=s.mutator.refill_seconds)
        if s.scenario:
            sc = s.scenario
            info = GaugeMetricFamily("sweeperd_scenario_info", "The scenario the mutators "
                                     "follow, and its current phase (value 1).",
                                     labels=["scenario", "phase"])
            info.add_metric([sc["name"], sc["phase_name"] or str(sc["phase"])], 1)
            yield info
            yield _gauge("sweeperd_scenario_elapsed_seconds", "Seconds since the scenario "
                         "started (when the first mutator was resumed; 0 until then).",
                         sc["elapsed_s"])
            yield _gauge("sweeperd_scenario_start_seconds", "When the scenario started, in "
                         "seconds since the daemon started (the gctrace lines' @); -1 until "
                         "it has.", -1.0 if sc["start_s"] is None else sc["start_s"])
            yield _gauge("sweeperd_scenario_target_live_bytes", "The live heap the scenario "
                         "asks of the mutators now.", sc["target_live_bytes"])

    def _heap(self, s: Snapshot, sample: Sample) -> Iterator[Metric]:
        yield _gauge("sweeperd_memory_sample_age_seconds",
                     "Age of the sampled figures (RSS, PSS).",
                     time.monotonic() - sample.at)
        b = self.kernel.books()
        hs = b.stats
        yield _gauge("sweeperd_heap_objects_bytes",
                     "Bytes in allocated objects (/memory/classes/heap/objects).", hs.objects_bytes)
        yield _gauge("sweeperd_heap_unused_bytes",
                     "Free slots inside in-use spans (/memory/classes/heap/unused).",
                     hs.unused_bytes)
        yield _gauge("sweeperd_heap_free_bytes",
                     "Free pages still backed by memory (/memory/classes/heap/free).",
                     hs.free_bytes)
        yield _gauge("sweeperd_heap_goal_bytes", "Heap goal (/gc/heap/goal).", s.goal_bytes)
        yield _gauge("sweeperd_heap_live_bytes", "Bytes marked live by the last GC cycle "
                     "(/gc/heap/live).", s.live_bytes)
        yield _gauge("sweeperd_heap_size_bytes", "Size of the heap arena (address space).",
                     hs.heap_bytes)
        yield _gauge("sweeperd_heap_releasing_bytes", "Free pages taken by a releaser, "
                     "madvise in flight (still in heap_free_bytes until it finishes).",
                     b.releasing_bytes)
        yield _gauge("sweeperd_heap_cached_bytes", "Pages of spans held in mutators' mcaches "
                     "(in heap_objects/unused; pages not written yet are not backed).",
                     b.cached_bytes)
        yield _gauge("sweeperd_heap_committing_bytes", "Released pages an allocator is "
                     "backing again (still in heap_released_bytes until it finishes; the "
                     "kernel may back them first).", b.committing_bytes)
        yield _gauge("sweeperd_heap_released_bytes", "Free pages returned to the OS, by the "
                     "books (/memory/classes/heap/released).", hs.released_bytes)
        yield _gauge("sweeperd_heap_fragmentation_bytes",
                     "Free slots in spans that also hold live objects: memory no scavenger "
                     "can release.", hs.fragmentation_bytes)
        k = self.kernel
        yield _gauge("sweeperd_heap_backed_bytes",
                     "The heap arena's true backing: its memfd's allocated blocks.",
                     k.arena_backed())
        yield _gauge("sweeperd_heap_metadata_backed_bytes",
                     "The heap metadata's true backing (span table, bitmaps).", k.meta_backed())
        yield _gauge("sweeperd_system_shmem_bytes", "Shmem in /proc/meminfo.", k.shmem())

    def _processes(self, sample: Sample) -> Iterator[Metric]:
        rss = GaugeMetricFamily("sweeperd_process_resident_bytes",
                                "RSS of each process (each counts the shared heap pages it "
                                "touched: do not sum).", labels=["role", "id"])
        pss = GaugeMetricFamily("sweeperd_process_pss_bytes",
                                "PSS of each process (shared pages divided fairly: sums "
                                "correctly).", labels=["role", "id"])
        for p in sample.processes:
            rss.add_metric([str(p["role"]), str(p["id"])], p["rss_bytes"])
            pss.add_metric([str(p["role"]), str(p["id"])], p["pss_bytes"])
        yield rss
        yield pss

    def _scavenger(self, s: Snapshot) -> Iterator[Metric]:
        sc = s.scavenger_status()
        yield _counter("sweeperd_scavenge_released_bytes",
                       "Bytes the scavenger returned to the OS, as the kernel counts them "
                       "(allocated blocks of the released runs).", sc["released_bytes_total"])
        yield _counter("sweeperd_scavenge_advised_bytes",
                       "Bytes of free pages the scavenger advised the kernel to drop, by the "
                       "books (never-touched pages included).", sc["advised_bytes_total"])
        yield _gauge("sweeperd_scavenge_retain_goal_bytes",
                     "Heap memory the scavenger lets stay backed (heap goal + 10%).",
                     sc["retain_goal_bytes"])
        yield _counter("sweeperd_scavenge_cpu_seconds", "CPU time the scavenger process used.",
                       sc["cpu_seconds_total"])
        yield _gauge("sweeperd_scavenge_cpu_fraction_target",
                     "The scavenger's CPU budget, a fraction of the whole machine.",
                     s.cpu_fraction_target)
        yield _gauge("sweeperd_machine_cpus", "CPUs of the machine (the scavenger's budget is "
                     "a fraction of all of them).", os.cpu_count() or 1)
        info = GaugeMetricFamily("sweeperd_scavenge_policy_info", "The scavenger policy "
                                 "(config scavenger.policy; always 1).", labels=["policy"])
        info.add_metric([sc["policy"]], 1)
        yield info
        engine = GaugeMetricFamily("sweeperd_sweep_engine_info", "The coordinator's sweep "
                                   "engine: the compiled kernels or numpy's (always 1).",
                                   labels=["engine"])
        engine.add_metric(["compiled" if kernels.enabled() else "numpy"], 1)
        yield engine
        yield _counter("sweeperd_scavenge_released_on_free_bytes",
                       "Bytes released by whoever freed them (the eager policy), as the kernel "
                       "counts them; included in sweeperd_scavenge_released_bytes.",
                       sc["released_on_free_bytes_total"])
        yield _counter("sweeperd_scavenge_released_on_free_cpu_seconds", "CPU the freers "
                       "spent releasing what they freed (the eager policy; their thread time). "
                       "Not in sweeperd_scavenge_cpu_seconds, which is the scavenger's.",
                       sc["released_on_free_cpu_seconds_total"])
        yield _counter("sweeperd_scavenge_assist_released_bytes", "Bytes allocations released "
                       "because the heap's backing was over the memory limit (the go policy at "
                       "version 1.21: Go's eager scavenging, the scav line's 'work (eager)'). "
                       "Not in sweeperd_scavenge_released_on_free_bytes.",
                       s.tallies.assist_released_pages * PAGE_SIZE)
        yield _counter("sweeperd_scavenge_assist_cpu_seconds", "CPU the mutators spent "
                       "releasing over the memory limit as they allocated (their thread time; "
                       "Go's /gc/scavenge/assist/cpu:cpu-seconds).",
                       s.tallies.assist_cpu_ns / 1e9)
        yield _counter("sweeperd_heap_freed_bytes", "Bytes of spans returned to the page heap "
                       "(what gperftools' release rate counts).", sc["freed_bytes_total"])
        yield _counter("sweeperd_heap_commit_failures", "Span allocations refused because "
                       "backing their pages would pass the heap's commit limit (the memory "
                       "cgroup's limit less the daemon's own) or the kernel said no: each an "
                       "out-of-memory wait of a mutator until a GC frees spans.",
                       s.tallies.commit_failures)
        for name, v in sorted(sc["policy_figures"].items()):
            yield _gauge(f"sweeperd_scavenge_policy_{name}", POLICY_FIGURES.get(
                name, "A figure of the scavenger policy."), v)
        calls = CounterMetricFamily("sweeperd_madvise_calls", "madvise calls by advice.",
                                    labels=["advice"])
        for advice in ADVICES:
            calls.add_metric([advice], sc["madvise_calls_total"].get(advice, 0))
        yield calls

    def _workers(self, s: Snapshot) -> Iterator[Metric]:
        workers = GaugeMetricFamily("sweeperd_workers", "Worker processes by role and state.",
                                    labels=["role", "state"])
        for role in Role:
            workers.add_metric([str(role), "alive"], s.alive(role))
            workers.add_metric([str(role), "starting"], s.starting(role))
        yield workers
        deaths = CounterMetricFamily("sweeperd_worker_deaths", "Worker processes that died.",
                                     labels=["role"])
        for role, n in s.deaths.items():
            deaths.add_metric([str(role)], n)
        yield deaths
        mem = CounterMetricFamily("sweeperd_worker_memory_deaths", "Worker processes that died "
                                  "of memory: killed by the OOM killer (the memory cgroup's "
                                  "oom_kill count rose) or by SIGBUS; counted in "
                                  "sweeperd_worker_deaths too.", labels=["role"])
        for role, n in s.memory_deaths.items():
            mem.add_metric([str(role)], n)
        yield mem
        errs = CounterMetricFamily("sweeperd_control_errors",
                                   "Malformed or refused control-plane messages.",
                                   labels=["reason"])
        for reason, n in s.control_errors.items():
            errs.add_metric([reason], n)
        yield errs
        reqs = CounterMetricFamily("sweeperd_control_requests",
                                   "Client requests on the control socket by type (status, "
                                   "ping, gc, scavenge; invalid: undecodable; handshake: a "
                                   "CURVE client key refused) and outcome (ok, coalesced, "
                                   "refused, busy, error).", labels=["type", "outcome"])
        seen = {(k, o): n for k, by in s.control_requests.items() for o, n in by.items()}
        for k in ("status", "ping", "gc", "scavenge"):
            for o in ("ok", "coalesced", "refused", "error"):
                seen.setdefault((k, o), 0)
        for (k, o), n in sorted(seen.items()):
            reqs.add_metric([k, o], n)
        yield reqs
        internal = CounterMetricFamily("sweeperd_internal_errors",
                                       "Unexpected exceptions while serving one message "
                                       "(logged with their traceback; the daemon went on).",
                                       labels=["where"])
        for where in ("control", "worker"):
            internal.add_metric([where], s.internal_errors.get(where, 0))
        yield internal


class _ListenerCollector(Collector):
    """The /metrics listener's own figures: the connections it dropped, by why."""

    def __init__(self, server: Callable[[], httpserve.BoundedServer | None]) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        srv = self.server()
        dropped = CounterMetricFamily(
            "sweeperd_metrics_connections_dropped",
            "Connections to /metrics the listener dropped: full (closed at once, every one of "
            f"its {httpserve.MAX_CONNECTIONS} slots answering a request), evicted (the oldest "
            "one still sending its request head, for a new one), deadline (open longer than "
            f"{httpserve.TIMEOUT_S:g} s). A scraper never needs more; many are a fault or an "
            "attack.", labels=["reason"])
        for reason in httpserve.DROP_REASONS:
            dropped.add_metric([reason], srv.dropped[reason] if srv is not None else 0)
        yield dropped


class Metrics:
    """The registry, the sampler thread and the HTTP server (httpserve.py: bounded
    connections, each with a timeout), started in that order."""

    def __init__(self, snapshot: Callable[[], Snapshot], take_sample: Callable[[], Sample],
                 kernel: Kernel) -> None:
        self.sampler = Sampler(take_sample)  # the first sample is taken here
        self.registry = CollectorRegistry()
        self.registry.register(SnapshotCollector(snapshot, lambda: self.sampler.latest, kernel))
        self.server: httpserve.BoundedServer | None = None
        self.registry.register(_ListenerCollector(lambda: self.server))

    def serve(self, addr: str) -> str:
        """Start the HTTP server (after the first snapshot exists); returns HOST:PORT."""
        host, _, port = addr.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1] -> ::1
        self.server = httpserve.serve(self.registry, host, int(port))
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{self.server.server_port}"

    def start_sampler(self) -> None:
        self.sampler.start()

    def close(self) -> None:
        self.sampler.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
