"""One sample of a running daemon: its ``/metrics`` as Prometheus reads them, and the kernel.

Theory of operation
-------------------
A load-test run reads two views every ``SAMPLE_S`` and keeps both, side by side, in one row:

* **the books** — the daemon's own figures, scraped over HTTP from ``/metrics`` and parsed
  with prometheus_client's text parser, exactly what a Prometheus server would store;
* **the kernel** — read here, by this process, never through the daemon: the heap arena's
  backing (``st_blocks`` of the coordinator's ``memfd:sweeperd-arena``, through
  ``/proc/PID/fd``), ``Shmem`` from ``/proc/meminfo``, and each process's PSS
  (``/proc/PID/smaps_rollup``) and CPU (``/proc/PID/stat``) summed by role.

Roles come from the daemon's ``status`` (pid -> role), asked once a second.  CPU is summed
over every pid ever seen in a role, so a replaced worker's seconds are not lost.  A process
that is gone between listing and reading is skipped, not an error.

Books against the kernel: the books' backed bytes are ``heap_size - released`` of the scrape,
less up to what the books cannot know is touched: ``releasing`` (pages whose madvise is in
flight: the kernel may have dropped them already), ``cached`` (spans in mutators' mcaches,
allocated but perhaps not written yet) and ``unused`` (free slots of in-use spans: touched if
ever allocated, not if never — the untouched tail of a partly filled span); and more by up to
``committing`` (released pages an allocator is backing again, up to a bulk step's 8 MiB: the
kernel backs them before the books stop counting them released).  The kernel's
figure moves while the scrape runs (mutators touch new pages, releasers drop them), so its
interval is the range of three reads of ``st_blocks``: the harness's just before and just
after the scrape, and the daemon's own within it (``sweeperd_heap_backed_bytes``).  A row's
``books_vs_kernel`` is the gap between the two intervals — 0 when they overlap — relative to
the kernel's figure, or to ``ERROR_FLOOR_BYTES`` when that is smaller (a few spans in flight
are percent of an empty heap).

What holds the memory
---------------------
Each row splits the sample's excess, ``kernel_backed_bytes − live_bytes`` (the kernel's
backing beyond the live heap the last GC marked: what ``excess_byte_seconds`` integrates), into
three debts, each paid by a different knob (:func:`excess_split`):

* ``garbage_bytes`` — object bytes the next mark will free: the books' allocated object bytes
  (``sweeperd_heap_objects_bytes``, Go's ``/memory/classes/heap/objects``) less the marked live
  heap.  Everything allocated since the last mark counts here, as it is not yet known live.
  The GC's lag: paid by GOGC and the memory limit;
* ``fragmentation_bytes`` — free slots of in-use spans (``sweeperd_heap_unused_bytes``, Go's
  ``/memory/classes/heap/unused``): paid by neither knob;
* ``free_backed_bytes`` — free pages the kernel still backs: the kernel's figure less the
  books' in-use spans (objects + unused).  The scavenger's lag: paid by the policy.

The kernel is the truth and the books are read a few milliseconds apart from it, so the
difference is attributed, and the three always add up to the excess exactly:
``free_backed_bytes`` is the remainder, ``kernel − live − garbage − fragmentation``, so pages
the kernel dropped while the books still count them free (a release in flight) are simply not
in it.  When the kernel holds less than the books' in-use spans (the remainder < 0), the
shortfall is pages of in-use spans never written — the untouched tails of fresh spans, which
are free slots — so it comes out of ``fragmentation_bytes`` first, then out of
``garbage_bytes`` (an object allocated whose pages are not written yet; in Go, a large object
from fresh memory, which Go does not zero), never below 0; only when the kernel holds less
than the live heap itself (the excess < 0) is anything left, and it stays in
``free_backed_bytes`` (< 0): the excess and its split are then both negative, never hidden.

Invariants: a row's keys are the same for every sample (missing figures are 0), so rows make
a CSV.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import zmq
from prometheus_client.parser import text_string_to_metric_families

from sweeperd.roles import Role
from sweeperd.wire import protocol
from sweeperd.workload.mutator import ALLOC_BUCKETS

SAMPLE_S = 0.25
ERROR_FLOOR_BYTES = 32 << 20
ROLES = ("coordinator", Role.MUTATOR, Role.SWEEPER, Role.SCAVENGER)  # (the CSV's order)
CLK_TCK = os.sysconf("SC_CLK_TCK")
ARENA = "memfd:sweeperd-arena"

# the scraped series kept, by the CSV column they go to
GAUGES = {
    "sweeperd_heap_live_bytes": "live_bytes",
    "sweeperd_heap_goal_bytes": "goal_bytes",
    "sweeperd_scavenge_retain_goal_bytes": "retain_goal_bytes",
    "sweeperd_heap_objects_bytes": "objects_bytes",
    "sweeperd_heap_free_bytes": "free_bytes",
    "sweeperd_heap_unused_bytes": "unused_bytes",
    "sweeperd_heap_released_bytes": "released_books_bytes",
    "sweeperd_heap_releasing_bytes": "releasing_books_bytes",
    "sweeperd_heap_cached_bytes": "cached_books_bytes",
    "sweeperd_heap_committing_bytes": "committing_books_bytes",
    "sweeperd_heap_size_bytes": "heap_size_bytes",
    "sweeperd_heap_backed_bytes": "daemon_backed_bytes",
    "sweeperd_scenario_target_live_bytes": "target_live_bytes",
    "sweeperd_scenario_elapsed_seconds": "scenario_elapsed_s",
    "sweeperd_scenario_start_seconds": "scenario_start_s",
    "sweeperd_gc_cycles_total": "gc_cycles",
    "sweeperd_scavenge_released_bytes_total": "released_bytes",
    "sweeperd_scavenge_cpu_seconds_total": "scavenge_cpu_daemon_s",
    "sweeperd_scavenge_released_on_free_cpu_seconds_total": "release_on_free_cpu_s",
    "sweeperd_mutator_allocated_bytes_total": "allocated_bytes",
}
SUMS = {"sweeperd_madvise_calls_total": "madvise_calls",
        "sweeperd_worker_deaths_total": "worker_deaths"}


def columns() -> list[str]:
    cols = ["t", *GAUGES.values(), *SUMS.values(), "sweep_pages_background",
            "sweep_pages_mutator", "alloc_count", "alloc_sum_s"]
    cols += [f"alloc_le_{i}" for i in range(len(ALLOC_BUCKETS))]
    cols += ["kernel_backed_before_bytes", "kernel_backed_bytes", "shmem_bytes",
             "books_backed_bytes", "books_vs_kernel"]
    cols += list(SPLIT)
    cols += [f"pss_{r}_bytes" for r in ROLES] + [f"cpu_{r}_s" for r in ROLES]
    return cols


SPLIT = ("garbage_bytes", "free_backed_bytes", "fragmentation_bytes")  # excess_split's order


def excess_split(kernel: float, live: float, objects: float,
                 unused: float) -> tuple[float, float, float]:
    """The excess ``kernel − live`` (bytes) as ``(garbage, free_backed, fragmentation)``, whose
    sum is exactly the excess (see the module's "What holds the memory"): garbage = object
    bytes beyond the live heap, fragmentation = free slots of in-use spans (``unused``), and
    free_backed = the rest of the kernel's backing; a kernel figure below the books' in-use
    spans is taken out of fragmentation, then garbage (never below 0), and only a kernel
    below the live heap leaves free_backed negative.  Pure; any float inputs."""
    garbage = max(0.0, objects - live)
    frag = max(0.0, unused)
    free = kernel - live - garbage - frag
    if free < 0:  # the kernel backs less than the books' in-use spans: pages never written
        take = min(frag, -free)
        frag, free = frag - take, free + take
        take = min(garbage, -free)
        garbage, free = garbage - take, free + take
    return garbage, free, frag


def split_columns(row: dict[str, float]) -> dict[str, float]:
    """The SPLIT columns of a row from its kernel_backed, live, objects and unused bytes."""
    g, f, u = excess_split(row["kernel_backed_bytes"], row["live_bytes"], row["objects_bytes"],
                           row["unused_bytes"])
    return dict(zip(SPLIT, (g, f, u), strict=True))


def parse_metrics(text: str) -> dict[str, float]:
    """The figures of one scrape (``columns`` names; those absent are left out)."""
    row: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in GAUGES:
                row[GAUGES[s.name]] = s.value
            elif s.name in SUMS:
                row[SUMS[s.name]] = row.get(SUMS[s.name], 0.0) + s.value
            elif s.name == "sweeperd_sweep_pages_total":
                row[f"sweep_pages_{s.labels.get('by', '')}"] = s.value
            elif s.name == "sweeperd_mutator_alloc_seconds_bucket":
                le = s.labels.get("le", "")
                if le != "+Inf":
                    row[f"alloc_le_{_bucket_index(float(le))}"] = s.value
            elif s.name == "sweeperd_mutator_alloc_seconds_count":
                row["alloc_count"] = s.value
            elif s.name == "sweeperd_mutator_alloc_seconds_sum":
                row["alloc_sum_s"] = s.value
    return row


def _bucket_index(le: float) -> int:
    for i, b in enumerate(ALLOC_BUCKETS):
        if abs(b - le) <= 1e-12 * max(1.0, b):
            return i
    raise ValueError(f"sweeperd_mutator_alloc_seconds has an unknown bucket le={le}")


def books_error(books_lo: float, books_hi: float, k0: float, k1: float) -> float:
    """The gap between the books' interval and the kernel's, relative to the kernel's figure
    (at least ERROR_FLOOR_BYTES); 0 when they overlap."""
    k_lo, k_hi = min(k0, k1), max(k0, k1)
    gap = max(0.0, books_lo - k_hi, k_lo - books_hi)
    return gap / max(k_hi, ERROR_FLOOR_BYTES)


def arena_fd(pid: int, proc: str = "/proc") -> str:
    """The path, under /proc, of the coordinator's heap arena memfd."""
    d = f"{proc}/{pid}/fd"
    for name in os.listdir(d):
        with contextlib.suppress(OSError):
            if os.readlink(f"{d}/{name}").startswith(f"/{ARENA}"):
                return f"{d}/{name}"
    raise FileNotFoundError(f"process {pid} has no {ARENA} open")


def pss_bytes(pid: int, proc: str = "/proc") -> int:
    with open(f"{proc}/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int, proc: str = "/proc") -> float:
    with open(f"{proc}/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def shmem_bytes(proc: str = "/proc") -> int:
    with open(f"{proc}/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sampler:
    """Samples one daemon: its coordinator's pid, metrics URL and control address."""

    pid: int
    metrics_url: str
    control: str
    t0: float = field(default_factory=time.monotonic)
    roles: dict[int, str] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)  # pid -> its last CPU seconds
    _roles_at: float = -1.0
    _arena: str = ""
    _zctx: zmq.Context | None = None

    def close(self) -> None:
        if self._zctx is not None:
            self._zctx.destroy(0)
            self._zctx = None

    def _status(self) -> dict[str, Any]:
        if self._zctx is None:
            self._zctx = zmq.Context()
        s = self._zctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(self.control)
            s.send(protocol.encode("status"))
            if not s.poll(2000):
                raise TimeoutError(f"no status from {self.control} within 2 s")
            reply: dict[str, Any] = json.loads(s.recv())
            return reply
        finally:
            s.close()

    def ask(self, kind: str, timeout_s: float = 5.0, tries: int = 20) -> dict[str, Any]:
        """An admin request (``gc``, ``scavenge``) and the daemon's reply; a ``busy`` reply
        (the heap lock held) is asked again, up to ``tries`` times.  TimeoutError when the
        daemon does not answer in ``timeout_s``."""
        if self._zctx is None:
            self._zctx = zmq.Context()
        reply: dict[str, Any] = {}
        for _ in range(tries):
            s = self._zctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            try:
                s.connect(self.control)
                s.send(protocol.encode(kind))
                if not s.poll(round(timeout_s * 1000)):
                    raise TimeoutError(f"no reply to {kind} from {self.control} within "
                                       f"{timeout_s:g} s")
                reply = json.loads(s.recv())
            finally:
                s.close()
            if reply.get("reason") != "busy":
                return reply
            time.sleep(0.05)
        return reply

    def _refresh_roles(self, now: float) -> None:
        """pid -> role from ``status``: at every sample until the scavenger is known (the
        workers are still starting), then once a second (replacements)."""
        if Role.SCAVENGER in self.roles.values() and now - self._roles_at < 1.0:
            return
        self._roles_at = now
        st = self._status()
        self.roles[self.pid] = "coordinator"
        for w in st.get("workers", []):
            if w.get("pid"):
                self.roles[int(w["pid"])] = str(w["role"])

    def take(self) -> dict[str, float]:
        """One row (every key of :func:`columns`)."""
        now = time.monotonic()
        self._refresh_roles(now)
        if not self._arena:
            self._arena = arena_fd(self.pid)
        k0 = os.stat(self._arena).st_blocks * 512
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            text = r.read().decode()
        k1 = os.stat(self._arena).st_blocks * 512
        row = dict.fromkeys(columns(), 0.0)
        row.update(parse_metrics(text))
        row["kernel_backed_before_bytes"], row["kernel_backed_bytes"] = k0, k1
        row["t"] = now - self.t0
        row["shmem_bytes"] = shmem_bytes()
        books = row["heap_size_bytes"] - row["released_books_bytes"]
        row["books_backed_bytes"] = books
        lo = (books - row["releasing_books_bytes"] - row["cached_books_bytes"]
              - row["unused_bytes"])
        hi = books + row["committing_books_bytes"]
        kd = row["daemon_backed_bytes"]
        row["books_vs_kernel"] = books_error(lo, hi, min(k0, k1, kd), max(k0, k1, kd))
        row.update(split_columns(row))
        for pid, role in list(self.roles.items()):
            try:
                row[f"pss_{role}_bytes"] += pss_bytes(pid)
                self.cpu[pid] = cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # gone; its CPU stays counted
        for pid, s in self.cpu.items():
            row[f"cpu_{self.roles[pid]}_s"] += s
        return row
