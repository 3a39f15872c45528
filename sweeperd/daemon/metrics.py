"""Prometheus metrics, served by the coordinator.

Figures are gathered by the coordinator itself (its own counters, the workers' reports over the
control plane, and reads of the shared heap and the kernel), so prometheus-client runs in one
process only and no multiprocess directory is needed.  Label sets are fixed (role, id, by,
state, reason, advice; ``id`` is a worker's slot, bounded by the config, never a pid):
cardinality does not grow with spans, pids or cycles.

A scrape must stay fast whatever the heap's size: ``smaps_rollup`` walks a process's page
tables (~3 ms for a process that touched 1 GiB) and the heap classes scan the span table, so a
:class:`Sampler` thread takes them every ``SAMPLE_S`` and a scrape serves the latest sample
(its age is exported); the cheap kernel figures (the arena's ``st_blocks``, ``Shmem``) are read
fresh at every scrape.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sweeperd.runtime.heapstats import HeapStats, heap_stats
from sweeperd.sys.procmem import meminfo

if TYPE_CHECKING:
    from sweeperd.daemon.coordinator import Coordinator


SAMPLE_S = 1.0


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    heap: HeapStats
    processes: list[dict[str, Any]]


class Sampler:
    """Takes the expensive figures off the scrape path: a daemon thread, one sample a period."""

    def __init__(self, take: Callable[[], Sample], period: float = SAMPLE_S) -> None:
        self.take = take
        self.period = period
        self.latest = take()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.latest = self.take()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class _Collector(Collector):
    def __init__(self, co: Coordinator) -> None:
        self.co = co

    def collect(self) -> Any:
        co = self.co
        yield CounterMetricFamily("sweeperd_gc_cycles", "Completed GC cycles.", value=co.cycles)
        spans = CounterMetricFamily("sweeperd_sweep_spans", "Spans swept, by who swept them.",
                                    labels=["by"])
        pages = CounterMetricFamily("sweeperd_sweep_pages", "Pages swept, by who swept them.",
                                    labels=["by"])
        for by, st in co.swept.items():
            spans.add_metric([by], st.spans)
            pages.add_metric([by], st.pages)
        yield spans
        yield pages
        yield CounterMetricFamily("sweeperd_sweep_objects_freed", "Objects freed by sweeping.",
                                  value=sum(s.objects_freed for s in co.swept.values()))
        yield CounterMetricFamily("sweeperd_finalizers_run", "Finalizers run.",
                                  value=co.finalizers_run)
        yield CounterMetricFamily("sweeperd_mutator_objects_allocated",
                                  "Objects allocated by mutators.",
                                  value=co.mutator_totals.get("objects_allocated", 0))
        yield CounterMetricFamily("sweeperd_mutator_allocated_bytes",
                                  "Bytes allocated by mutators.",
                                  value=co.mutator_totals.get("bytes_allocated", 0))
        sample = co.metrics.sampler.latest if co.metrics.sampler else co.metrics.sample_now()
        yield GaugeMetricFamily("sweeperd_memory_sample_age_seconds",
                                "Age of the sampled figures (heap classes, RSS, PSS).",
                                value=time.monotonic() - sample.at)
        hs = sample.heap
        for name, help_, v in (
            ("sweeperd_heap_objects_bytes", "Bytes in allocated objects "
             "(/memory/classes/heap/objects).", hs.objects_bytes),
            ("sweeperd_heap_unused_bytes", "Free slots inside in-use spans "
             "(/memory/classes/heap/unused).", hs.unused_bytes),
            ("sweeperd_heap_free_bytes", "Free pages still backed by memory "
             "(/memory/classes/heap/free).", hs.free_bytes),
            ("sweeperd_heap_goal_bytes", "Heap goal (/gc/heap/goal).", co.goal_bytes),
            ("sweeperd_heap_size_bytes", "Size of the heap arena (address space).",
             hs.heap_bytes),
        ):
            yield GaugeMetricFamily(name, help_, value=v)
        yield GaugeMetricFamily("sweeperd_heap_released_bytes",
                                "Free pages returned to the OS, by the books "
                                "(/memory/classes/heap/released).", value=hs.released_bytes)
        yield GaugeMetricFamily("sweeperd_heap_backed_bytes",
                                "The heap arena's true backing: its memfd's allocated blocks.",
                                value=co.heap.arena_backed_bytes())
        yield GaugeMetricFamily("sweeperd_heap_metadata_backed_bytes",
                                "The heap metadata's true backing (span table, bitmaps).",
                                value=co.heap.meta_backed_bytes())
        yield GaugeMetricFamily("sweeperd_system_shmem_bytes", "Shmem in /proc/meminfo.",
                                value=meminfo("Shmem"))
        yield GaugeMetricFamily("sweeperd_heap_fragmentation_bytes",
                                "Free slots in spans that still hold live objects: memory the "
                                "scavenger cannot release.", value=hs.unused_bytes)
        rss = GaugeMetricFamily("sweeperd_process_resident_bytes",
                                "RSS of each process (each counts the shared heap pages it "
                                "touched: do not sum).", labels=["role", "id"])
        pss = GaugeMetricFamily("sweeperd_process_pss_bytes",
                                "PSS of each process (shared pages divided fairly: sums "
                                "correctly).", labels=["role", "id"])
        for p in sample.processes:
            rss.add_metric([p["role"], str(p["id"])], p["rss_bytes"])
            pss.add_metric([p["role"], str(p["id"])], p["pss_bytes"])
        yield rss
        yield pss
        sc = co._scavenger_status()
        yield CounterMetricFamily("sweeperd_scavenge_released_bytes",
                                  "Bytes the scavenger returned to the OS, as the kernel "
                                  "counts them (allocated blocks of the released runs).",
                                  value=sc["released_bytes_total"])
        yield CounterMetricFamily("sweeperd_scavenge_advised_bytes",
                                  "Bytes of free pages the scavenger advised the kernel to "
                                  "drop, by the books (never-touched pages included).",
                                  value=sc["advised_bytes_total"])
        yield GaugeMetricFamily("sweeperd_scavenge_retain_goal_bytes",
                                "Heap memory the scavenger lets stay backed (heap goal + 10%).",
                                value=sc["retain_goal_bytes"])
        yield CounterMetricFamily("sweeperd_scavenge_cpu_seconds",
                                  "CPU time the scavenger process used.",
                                  value=sc["cpu_seconds_total"])
        yield GaugeMetricFamily("sweeperd_scavenge_cpu_fraction_target",
                                "The scavenger's CPU budget, a fraction of the whole machine.",
                                value=co.cfg.scavenger.cpu_fraction)
        yield GaugeMetricFamily("sweeperd_machine_cpus",
                                "CPUs of the machine (the scavenger's budget is a fraction of "
                                "all of them).", value=os.cpu_count() or 1)
        calls = CounterMetricFamily("sweeperd_madvise_calls", "madvise calls by advice.",
                                    labels=["advice"])
        for advice in ("REMOVE", "REMOVE_vectored", "DONTNEED", "FREE", "NOHUGEPAGE",
                       "HUGEPAGE"):
            calls.add_metric([advice], sc["madvise_calls_total"].get(advice, 0))
        yield calls
        workers = GaugeMetricFamily("sweeperd_workers", "Worker processes by role and state.",
                                    labels=["role", "state"])
        for role in ("sweeper", "mutator", "scavenger"):
            ws = [w for w in co.workers.values() if w.role == role]
            workers.add_metric([role, "alive"], sum(1 for w in ws if w.identity))
            workers.add_metric([role, "starting"], sum(1 for w in ws if not w.identity))
        yield workers
        deaths = CounterMetricFamily("sweeperd_worker_deaths", "Worker processes that died.",
                                     labels=["role"])
        for role, n in co.deaths.items():
            deaths.add_metric([role], n)
        yield deaths
        errs = CounterMetricFamily("sweeperd_control_errors",
                                   "Malformed or refused control-plane messages.",
                                   labels=["reason"])
        for reason, n in co.control_errors.items():
            errs.add_metric([reason], n)
        yield errs


class Metrics:
    def __init__(self, co: Coordinator) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(co))
        self.sweep_phase = Histogram(
            "sweeperd_sweep_phase_seconds", "Duration of sweep phases.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.server: Any = None
        self.co = co
        self.sampler: Sampler | None = None

    def sample_now(self) -> Sample:
        return Sample(time.monotonic(), heap_stats(self.co.heap), self.co.process_memory())

    def start_sampler(self, period: float = SAMPLE_S) -> None:
        self.sampler = Sampler(self.sample_now, period)
        self.sampler.start()

    def serve(self, addr: str) -> str:
        host, _, port = addr.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1] -> ::1
        self.server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{self.server.server_port}"

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
