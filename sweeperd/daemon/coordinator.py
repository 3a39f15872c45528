"""The coordinator: runs GC cycles over worker processes, serves control and metrics.

Theory of operation
-------------------
One process owns the heap and drives the cycle as a small state machine, polled every 10 ms:

``idle``   mutators allocate; when the heap's objects reach the trigger (GOGC-style, or the
           heap is 90% full, or a client asked for ``gc``) the coordinator sends ``mark`` to
           every mutator and goes to ``mark``.
``mark``   each mutator flushes its mcache, marks its live objects and answers ``marked`` (it
           then waits).  When all have answered (or died), the heap goal is set from the
           marked bytes, ``sweepgen += 2`` under the heap lock, the pages are sharded over the
           sweepers, sweepers get ``sweep`` and mutators ``resume`` (with their proportional
           sweep rate): ``sweep``.
``sweep``  sweepers sweep their shards and steal; mutators sweep on demand and pay sweep debt.
           Sweep termination is exact: every sweeper has answered ``swept`` for this cycle, no
           page is left in any shard, and no in-use span is at h-2 or h-1.  Then finalizers are
           drained and the cycle is counted: back to ``idle``.

A child that dies (its process is gone, or it was silent past ``dead_after_ms`` and is killed)
is reaped; the spans it had claimed (``span_owner``) are swept by the coordinator with
``recover=True``; a dead mutator's cached spans are uncached; a replacement with the same id
is started and, if a sweep is running, told to sweep.  Nothing is lost: every decision is
recomputed from the shared heap, never from what a dead process knew.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from sweeperd.daemon.config import Config
from sweeperd.daemon.metrics import Metrics
from sweeperd.pacing.scavpace import retain_goal
from sweeperd.runtime import owners, recovery, scavenge, shards
from sweeperd.runtime.heap import H_HEAP_GOAL, H_MEMORY_LIMIT, H_SWEEPGEN, Heap
from sweeperd.runtime.heapstats import heap_stats, marked_bytes
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.runtime.specials import run_finalizers
from sweeperd.runtime.sweep import SweepStats, sweep_batch
from sweeperd.sys.procmem import meminfo, process_memory
from sweeperd.sys.sdnotify import Notifier
from sweeperd.sys.sysmem import SysMem
from sweeperd.wire import protocol


@dataclass
class Worker:
    role: str
    id: int
    proc: Any
    started: float
    identity: bytes | None = None
    last_seen: float = 0.0
    last_stats: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)


class Coordinator:
    def __init__(self, cfg: Config) -> None:
        import multiprocess as mp

        self.cfg = cfg
        self.notify = Notifier.from_env()  # first: no worker may inherit NOTIFY_SOCKET
        self.mp = mp.get_context("spawn")
        self.heap = Heap.create(cfg.heap.size_mib << 20)
        self.ipc_dir = tempfile.mkdtemp(prefix="sweeperd-")  # 0700
        self.worker_endpoint = f"ipc://{self.ipc_dir}/workers.sock"
        self.zctx = zmq.Context()
        self.wsock = self.zctx.socket(zmq.ROUTER)
        self.wsock.setsockopt(zmq.LINGER, 0)
        self.wsock.bind(self.worker_endpoint)
        self.csock = self.zctx.socket(zmq.REP)
        self.csock.setsockopt(zmq.LINGER, 0)
        self.csock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # hard cap; 64 KiB gets an error reply
        addr = cfg.control.addr
        if addr.startswith("tcp://") and addr.endswith(":0"):
            addr = addr[:-2] + ":*"
        self.csock.bind(addr)
        self.control_addr = self.csock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.metrics = Metrics(self)
        self.metrics_addr = self.metrics.serve(cfg.metrics.addr)
        self.workers: dict[tuple[str, int], Worker] = {}
        self.by_identity: dict[bytes, Worker] = {}
        self.phase = "idle"
        self.cycles = 0
        self.goal_bytes = cfg.gc.min_goal_mib << 20
        self.trigger_bytes = int(self.goal_bytes * 0.9)
        self.force_gc = False
        self.pending: set[int] = set()
        self.phase_started = time.monotonic()
        self.sweep_pages_per_byte = 0.0
        self.deaths = {"sweeper": 0, "mutator": 0, "scavenger": 0}
        self.swept = {"background": SweepStats(), "mutator": SweepStats()}
        self.mutator_totals: dict[str, float] = {}
        self.finalizers_run = 0
        self.control_errors: dict[str, int] = {}
        self.debug = {"cycles_checked": 0, "spans_checked": 0, "exactly_once_violations": 0,
                      "conservation_checks": 0, "conservation_gap": 0}
        self._ns0: tuple[np.ndarray, np.ndarray] | None = None
        self.stopping = False
        self.last_trigger_check = 0.0
        self.sysmem = SysMem(base=self.heap.arena.ctypes.data, size=self.heap.heap_bytes,
                             shared=True)
        self.scav_totals: dict[str, float] = {}
        self.heap.header[H_HEAP_GOAL] = self.goal_bytes
        self.heap.header[H_MEMORY_LIMIT] = cfg.scavenger.memory_limit_mib << 20

    # --- processes ---------------------------------------------------------------------------

    def start_all(self) -> None:
        for i in range(self.cfg.sweep.sweepers):
            self._start("sweeper", i)
        for j in range(self.cfg.mutators.count):
            self._start("mutator", j)
        if self.cfg.scavenger.enabled:
            self._start("scavenger", 0)

    def _start(self, role: str, wid: int) -> None:
        hb = self.cfg.control.heartbeat_ms
        handle = self.heap.handle.to_dict()
        target: Any
        if role == "sweeper":
            from workers.sweeper import main as target

            args: tuple[Any, ...] = (handle, wid, self.worker_endpoint,
                                     self.cfg.sweep.chunk_pages, hb)
        elif role == "scavenger":
            from workers.scavenger import main as target

            sc = self.cfg.scavenger
            args = (handle, self.worker_endpoint, sc.cpu_fraction, os.cpu_count() or 1,
                    sc.vectored, hb)
        else:
            from workers.mutator import main as target

            mcfg = self.cfg.mutators.workload().to_dict()
            args = (handle, wid, self.worker_endpoint, mcfg, hb, self.cfg.run.debug_checks)
        p = self.mp.Process(target=target, args=args, name=f"sweeperd-{role}-{wid}",
                            daemon=False)
        p.start()
        now = time.monotonic()
        self.workers[(role, wid)] = Worker(role, wid, p, now, last_seen=now)

    def _check_children(self) -> None:
        now = time.monotonic()
        dead_after = self.cfg.control.dead_after_ms / 1000
        for w in list(self.workers.values()):
            if w.proc.is_alive() and now - w.last_seen > dead_after:
                print(f"sweeperd: {w.role} {w.id} (pid {w.pid}) silent for "
                      f"{now - w.last_seen:.1f}s: killing it", flush=True)
                w.proc.kill()
            if not w.proc.is_alive():
                self._on_death(w)

    def _on_death(self, w: Worker) -> None:
        w.proc.join()
        code = w.proc.exitcode
        print(f"sweeperd: {w.role} {w.id} (pid {w.pid}) died (exit {code}); recovering and "
              "starting a replacement", flush=True)
        self.deaths[w.role] += 1
        if w.identity is not None:
            self.by_identity.pop(w.identity, None)
        rec = recovery.recover(self.heap, w.role, w.id, self.sysmem)
        self._count_release(rec.released)
        self.swept["background"].add(rec.swept)
        if rec.alloc_counts_repaired:
            print(f"sweeperd: repaired allocCount of {rec.alloc_counts_repaired} spans from "
                  "their bitmaps", flush=True)
        if w.role != "scavenger":
            self.pending.discard(w.id if w.role == "sweeper" else -1 - w.id)
        del self.workers[(w.role, w.id)]
        if not self.stopping:
            self._start(w.role, w.id)

    # --- messages ----------------------------------------------------------------------------

    def _send(self, w: Worker, mtype: str, **f: Any) -> None:
        if w.identity is not None:
            self.wsock.send_multipart([w.identity, protocol.encode(mtype, **f)])

    def _on_worker_frame(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._count_error("multipart")
            return
        ident, frame = frames
        try:
            msg = protocol.decode(frame)
        except protocol.ProtocolError as e:
            self._count_error(e.reason)
            return
        if msg.type == "hello":
            w = self.workers.get((msg["role"], msg["id"]))
            if w is None or w.pid != msg["pid"]:
                self._count_error("unknown_worker")
                return
            w.identity = ident
            self.by_identity[ident] = w
            w.last_seen = time.monotonic()
            self._welcome(w)
            return
        w2 = self.by_identity.get(ident)
        if w2 is None:
            self._count_error("unknown_worker")
            return
        w2.last_seen = time.monotonic()
        if msg.type == "swept" and w2.role == "sweeper":
            if self.phase == "sweep" and msg["cycle"] == self.heap.sweepgen:
                self.pending.discard(w2.id)
            st = msg["stats"]
            b = self.swept["background"]
            b.spans += int(st["spans"])
            b.pages += int(st["pages"])
            b.objects_freed += int(st["objects_freed"])
        elif msg.type == "heartbeat" and w2.role == "scavenger":
            prev = w2.last_stats
            for k, v in msg["stats"].items():
                if k in ("sleep_ratio", "vectored"):
                    self.scav_totals[k] = v
                else:
                    self.scav_totals[k] = self.scav_totals.get(k, 0) + v - prev.get(k, 0)
            w2.last_stats = dict(msg["stats"])
        elif msg.type in ("heartbeat", "marked") and w2.role == "mutator":
            self._mutator_stats(w2, msg["stats"])
            if msg.type == "marked" and self.phase == "mark":
                self.pending.discard(-1 - w2.id)

    def _welcome(self, w: Worker) -> None:
        """A new (or replacement) worker: bring it into the current phase."""
        h = self.heap.sweepgen
        if w.role == "sweeper" and self.phase == "sweep":
            self.pending.add(w.id)
            self._send(w, "sweep", cycle=h)
        elif w.role == "mutator" and self.phase != "mark":
            self._send(w, "resume", cycle=h, sweep_pages_per_byte=self.sweep_pages_per_byte)

    def _mutator_stats(self, w: Worker, st: dict[str, float]) -> None:
        m = self.swept["mutator"]
        prev = w.last_stats
        m.spans += int(st.get("spans_swept", 0) - prev.get("spans_swept", 0))
        m.pages += int(st.get("pages_swept", 0) - prev.get("pages_swept", 0))
        m.objects_freed += int(st.get("objects_freed", 0) - prev.get("objects_freed", 0))
        for k, v in st.items():
            if k != "live_objects":
                self.mutator_totals[k] = self.mutator_totals.get(k, 0) + v - prev.get(k, 0)
        w.last_stats = dict(st)

    def _count_error(self, reason: str) -> None:
        self.control_errors[reason] = self.control_errors.get(reason, 0) + 1

    def _on_client(self) -> None:
        frames = self.csock.recv_multipart()
        if len(frames) != 1:
            self._count_error("multipart")
            self.csock.send(protocol.reply(False, error="one frame per request",
                                           reason="multipart"))
            return
        try:
            msg = protocol.decode(frames[0], protocol.CLIENT_TYPES)
        except protocol.ProtocolError as e:
            self._count_error(e.reason)
            self.csock.send(protocol.error_reply(e))
            return
        if msg.type == "status":
            self.csock.send(protocol.reply(True, **self.status()))
        elif msg.type == "gc":
            self.force_gc = True
            self.csock.send(protocol.reply(True, cycle=self.cycles))
        elif msg.type == "scavenge":
            scav = self.workers.get(("scavenger", 0))
            if scav is not None and scav.identity is not None:
                self._send(scav, "release_all")
                self.csock.send(protocol.reply(True, requested=True, by="scavenger"))
            else:  # no scavenger process: release here, now
                r = scavenge.scavenge(self.heap, self.sysmem, self.heap.npages)
                self._count_release(r)
                self.csock.send(protocol.reply(True, released_bytes=r.kernel_bytes,
                                               advised_bytes=r.bytes, by="coordinator"))
        else:
            self.csock.send(protocol.reply(True, pong=True))

    # --- the cycle ---------------------------------------------------------------------------

    def _mutators(self) -> list[Worker]:
        return [w for (r, _), w in self.workers.items() if r == "mutator"]

    def _sweepers(self) -> list[Worker]:
        return [w for (r, _), w in self.workers.items() if r == "sweeper"]

    def _should_trigger(self) -> bool:
        if self.force_gc:
            return True
        now = time.monotonic()
        if now - self.last_trigger_check < 0.02:
            return False
        self.last_trigger_check = now
        hs = heap_stats(self.heap)
        return (hs.objects_bytes >= self.trigger_bytes
                or hs.free_bytes + hs.released_bytes < 0.1 * hs.heap_bytes)

    def _begin_mark(self) -> None:
        self.force_gc = False
        self.phase, self.phase_started = "mark", time.monotonic()
        self.pending = set()
        for w in self._mutators():
            if w.identity is not None:
                self.pending.add(-1 - w.id)
                self._send(w, "mark", cycle=self.heap.sweepgen + 2)

    def _check_conservation(self) -> None:
        """Between mark and sweep nothing moves (mutators wait, sweepers are done), so every
        object ever allocated is either in the heap or was freed.  A worker killed after
        freeing objects and before reporting them leaves a gap; so the check is meaningful
        only while no worker has died, and the gap is reported, not forced to zero."""
        spans = self.heap.in_use_spans()
        in_heap = int(self.heap.span_alloc_count[spans].sum(dtype=np.int64))
        freed = sum(v.objects_freed for v in self.swept.values())
        allocated = int(self.mutator_totals.get("objects_allocated", 0))
        self.debug["conservation_checks"] += 1
        self.debug["conservation_gap"] = allocated - in_heap - freed

    def _begin_sweep(self) -> None:
        cfg = self.cfg
        if cfg.run.debug_checks:
            self._check_conservation()
        live = marked_bytes(self.heap)
        self.goal_bytes = max(int(live * (1 + cfg.gc.gogc / 100)), cfg.gc.min_goal_mib << 20)
        self.trigger_bytes = live + int(0.9 * (self.goal_bytes - live))
        self.heap.header[H_HEAP_GOAL] = self.goal_bytes  # the scavenger's retain goal follows
        with self.heap.lock:
            self.heap.header[H_SWEEPGEN] += 2
            shards.assign(self.heap, len(self._sweepers()) or 1)
        h = self.heap.sweepgen
        spans0 = self.heap.in_use_spans()
        if cfg.run.debug_checks:
            self._ns0 = (spans0, self.heap.span_nsweeps[spans0].copy())
        runway = max(self.trigger_bytes - live - (1 << 20), 1 << 20)
        self.sweep_pages_per_byte = float(self.heap.span_npages[spans0].sum()) / runway
        self.phase, self.phase_started = "sweep", time.monotonic()
        self.pending = set()
        for w in self._sweepers():
            if w.identity is not None:
                self.pending.add(w.id)
                self._send(w, "sweep", cycle=h)
        for w in self._mutators():
            self._send(w, "resume", cycle=h, sweep_pages_per_byte=self.sweep_pages_per_byte)

    def _sweep_done(self) -> bool:
        if self.pending or shards.remaining_pages(self.heap) or shards.in_flight(self.heap):
            return False
        if shards.unfinished(self.heap).size:
            return False  # a mutator is finishing a chunk
        left = shards.unswept(self.heap)
        if left.size:  # not reachable through the shards: sweep them here, loudly
            print(f"sweeperd: {left.size} spans missed by the shards; sweeping them", flush=True)
            with self.heap.lock:
                from sweeperd.runtime.sweepgen import try_claim

                mine = try_claim(self.heap.span_sweepgen, left, self.heap.sweepgen,
                                 self.heap.span_owner, owners.COORDINATOR)
            self.swept["background"].add(sweep_batch(self.heap, mine))
        return True

    def _end_sweep(self) -> None:
        self.metrics.sweep_phase.observe(time.monotonic() - self.phase_started)
        if self._ns0 is not None:
            spans0, ns0 = self._ns0
            d = self.heap.span_nsweeps[spans0].astype(np.int64) - ns0
            self.debug["cycles_checked"] += 1
            self.debug["spans_checked"] += int(spans0.size)
            self.debug["exactly_once_violations"] += int(np.count_nonzero(d != 1))
            self._ns0 = None
        with self.heap.lock:
            fs, _ = run_finalizers(self.heap)
        self.finalizers_run += int(fs.size)
        self.cycles += 1
        self.phase, self.phase_started = "idle", time.monotonic()

    def step(self) -> None:
        if self.phase == "idle":
            if self._should_trigger():
                self._begin_mark()
        elif self.phase == "mark":
            if not self.pending:
                self._begin_sweep()
        elif self.phase == "sweep" and self._sweep_done():
            self._end_sweep()

    # --- main loop ---------------------------------------------------------------------------

    def run(self, duration_s: float = 0) -> None:
        deadline = time.monotonic() + duration_s if duration_s else None
        poller = zmq.Poller()
        poller.register(self.wsock, zmq.POLLIN)
        poller.register(self.csock, zmq.POLLIN)
        self.start_all()
        self.metrics.start_sampler()
        self.notify.ready(f"serving metrics on {self.metrics_addr}, control on "
                          f"{self.control_addr}")
        while not self.stopping and (deadline is None or time.monotonic() < deadline):
            self.notify.ping(time.monotonic())
            ready = dict(poller.poll(10))
            while self.wsock in ready and self.wsock.poll(0):
                self._on_worker_frame(self.wsock.recv_multipart())
            if self.csock in ready:
                self._on_client()
            self._check_children()
            self.step()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def close(self) -> None:
        """Drain: stop every child, reap it, close sockets, unmap and free the heap."""
        self.stopping = True
        self.notify.stopping(f"draining after {self.cycles} cycles")
        for w in self.workers.values():
            self._send(w, "stop")
        end = time.monotonic() + 5
        for w in self.workers.values():
            w.proc.join(timeout=max(0.0, end - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
        self.workers.clear()
        self.metrics.close()
        self.wsock.close()
        self.csock.close()
        self.zctx.term()
        self.heap.close()
        shutil.rmtree(self.ipc_dir, ignore_errors=True)
        if self.control_addr.startswith("ipc://"):
            with contextlib.suppress(OSError):
                os.unlink(self.control_addr[6:])

    # --- status ------------------------------------------------------------------------------

    def _count_release(self, r: scavenge.Released) -> None:
        """A release done here (a dead scavenger's recovery, FreeOSMemory without one)."""
        t = self.scav_totals
        t["released_pages"] = t.get("released_pages", 0) + r.pages
        t["release_runs"] = t.get("release_runs", 0) + r.runs
        t["released_kernel_bytes"] = t.get("released_kernel_bytes", 0) + r.kernel_bytes

    def _madvise_calls(self) -> dict[str, int]:
        """The scavenger processes' calls and the coordinator's own (recovery, FreeOSMemory)."""
        calls = dict(self.sysmem.calls)
        for k, v in self.scav_totals.items():
            if k.startswith("madvise_"):
                calls[k[8:]] = calls.get(k[8:], 0) + int(v)
        return calls

    def _scavenger_status(self) -> dict[str, Any]:
        t = self.scav_totals
        return {
            # what the kernel gave back (blocks of the runs, counted before each release) ...
            "released_bytes_total": int(t.get("released_kernel_bytes", 0)),
            # ... and what was advised, by the books (includes never-touched free pages)
            "advised_bytes_total": int(t.get("released_pages", 0)) * PAGE_SIZE,
            "release_runs_total": int(t.get("release_runs", 0)),
            "cpu_seconds_total": float(t.get("cpu_seconds", 0.0)),
            "madvise_calls_total": self._madvise_calls(),
            "vectored": bool(t.get("vectored", 0)),
            "retain_goal_bytes": retain_goal(self.goal_bytes,
                                             self.cfg.scavenger.memory_limit_mib << 20),
        }

    def process_memory(self) -> list[dict[str, Any]]:
        """RSS and PSS of every process, labelled by role and slot id (never summed: RSS
        counts the shared heap in each).  Safe from another thread."""
        procs = [("coordinator", 0, os.getpid())] + [
            (w.role, w.id, w.pid) for w in list(self.workers.values())]
        out = []
        for role, wid, pid in procs:
            pm = process_memory(pid)
            if pm is not None:
                out.append({"role": role, "id": wid, "pid": pid, "rss_bytes": pm.rss_bytes,
                            "pss_bytes": pm.pss_bytes})
        return out

    def memory(self) -> dict[str, Any]:
        """Memory as the kernel sees it now: the heap's true backing, the system's Shmem, and
        every process's RSS and PSS."""
        return {"heap_backed_bytes": self.heap.arena_backed_bytes(),
                "metadata_backed_bytes": self.heap.meta_backed_bytes(),
                "system_shmem_bytes": meminfo("Shmem"), "processes": self.process_memory()}

    def status(self) -> dict[str, Any]:
        hs = heap_stats(self.heap)
        alloc_s = self.mutator_totals.get("alloc_seconds", 0)
        nmut = max(1, len(self._mutators()))
        return {
            "cycle": self.cycles,
            "sweepgen": self.heap.sweepgen,
            "phase": self.phase,
            "pid": os.getpid(),
            "workers": [{"role": w.role, "id": w.id, "pid": w.pid,
                         "state": "alive" if w.identity else "starting"}
                        for w in self.workers.values()],
            "workers_alive": sum(1 for w in self.workers.values() if w.proc.is_alive()),
            "deaths": dict(self.deaths),
            "spans_swept": {k: v.spans for k, v in self.swept.items()},
            "pages_swept": {k: v.pages for k, v in self.swept.items()},
            "objects_freed": sum(v.objects_freed for v in self.swept.values()),
            "heap": {**hs.as_dict(), "goal_bytes": self.goal_bytes,
                     "trigger_bytes": self.trigger_bytes,
                     "arena_backed_bytes": self.heap.arena_backed_bytes(),
                     "meta_backed_bytes": self.heap.meta_backed_bytes()},
            "mutators": {
                "objects_allocated": int(self.mutator_totals.get("objects_allocated", 0)),
                "bytes_allocated": int(self.mutator_totals.get("bytes_allocated", 0)),
                "objects_per_s_per_mutator": (
                    self.mutator_totals.get("objects_allocated", 0) / alloc_s
                    if alloc_s else 0.0),
                "mutators": nmut,
                "oom_waits": int(self.mutator_totals.get("oom_waits", 0)),
                "lost_objects": int(self.mutator_totals.get("lost_objects", 0)),
                "payload_errors": int(self.mutator_totals.get("payload_errors", 0)),
                "objects_checked": int(self.mutator_totals.get("objects_checked", 0)),
            },
            "finalizers_run": self.finalizers_run,
            "scavenger": self._scavenger_status(),
            "memory": self.memory(),
            "heap_handle": self.heap.handle.to_dict(),
            "control_errors": dict(self.control_errors),
            "debug": dict(self.debug, enabled=self.cfg.run.debug_checks),
            "control_addr": self.control_addr,
            "ipc_dir": self.ipc_dir,
            "metrics_addr": self.metrics_addr,
        }
