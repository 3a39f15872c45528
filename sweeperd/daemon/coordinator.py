"""The coordinator: the shell around the GC cycle machine, the heap and the worker processes.

Theory of operation
-------------------
One process owns the heap, the sockets, the worker processes and the clock.  Its main loop,
every 10 ms (or as soon as a frame arrives):

1. reads worker frames and client requests and turns each into an event for the cycle machine
   (cycle.py), or into a refusal counted in ``control_errors`` — a peer's frame that is
   malformed, from an unknown identity, or untimely (the machine's ``IllegalTransition``)
   changes nothing;
2. reaps worker processes that have exited (the machine then orders recovery and a restart);
3. feeds the machine a tick;
4. carries out every action the machine returns (sending messages, measuring the heap and
   answering with the measurement, advancing sweepgen and sharding, recovery, restarts);
5. publishes an immutable :class:`~sweeperd.daemon.snapshot.Snapshot`, the only thing the
   metrics thread and ``status`` read.

All GC-cycle decisions are the machine's; all heap work is ``sweeperd.runtime``'s; this module
only connects them.  Nothing is lost when a worker dies: every decision is recomputed from the
shared heap, never from what a dead process knew.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from typing import Any

import zmq

from sweeperd.daemon import cycle as c
from sweeperd.daemon.config import Config
from sweeperd.daemon.cycle import Role, Slot
from sweeperd.daemon.metrics import Kernel, Metrics, Sample
from sweeperd.daemon.snapshot import Snapshot, status_json
from sweeperd.daemon.supervisor import Supervisor
from sweeperd.daemon.totals import Totals
from sweeperd.pacing.scavpace import retain_goal
from sweeperd.runtime import check, owners, recovery, scavenge, shards
from sweeperd.runtime.heap import H_HEAP_GOAL, H_MEMORY_LIMIT, H_SWEEPGEN, Heap
from sweeperd.runtime.heapstats import heap_stats, marked_bytes
from sweeperd.runtime.specials import run_finalizers
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.runtime.sweepgen import try_claim
from sweeperd.sys.procmem import meminfo, process_memory
from sweeperd.sys.sdnotify import Notifier
from sweeperd.sys.sysmem import SysMem
from sweeperd.wire import protocol

POLL_MS = 10
DRAIN_S = 5.0


def _log(msg: str) -> None:
    print(f"sweeperd: {msg}", flush=True)


class Coordinator:
    def __init__(self, cfg: Config) -> None:
        import multiprocess as mp

        self.cfg = cfg
        self.notify = Notifier.from_env()  # first: no worker may inherit NOTIFY_SOCKET
        self.stopping = False
        with contextlib.ExitStack() as undo:  # a failure part way releases what was made
            self.heap = Heap.create(cfg.heap.size_mib << 20)
            undo.callback(self.heap.close)
            self.ipc_dir = tempfile.mkdtemp(prefix="sweeperd-")  # 0700
            undo.callback(shutil.rmtree, self.ipc_dir, True)
            self.zctx = zmq.Context()
            undo.callback(self.zctx.destroy, 0)
            self.wsock = self.zctx.socket(zmq.ROUTER)
            self.wsock.setsockopt(zmq.LINGER, 0)
            self.wsock.bind(f"ipc://{self.ipc_dir}/workers.sock")
            self.csock = self.zctx.socket(zmq.REP)
            self.csock.setsockopt(zmq.LINGER, 0)
            self.csock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # hard cap; 64 KiB gets an error
            addr = cfg.control.addr
            if addr.startswith("tcp://") and addr.endswith(":0"):
                addr = addr[:-2] + ":*"
            self.csock.bind(addr)
            self.control_addr = self.csock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.sysmem = SysMem(base=self.heap.arena.ctypes.data, size=self.heap.heap_bytes,
                                 shared=True)
            self.machine = c.GCCycle(c.Params(
                gogc=cfg.gc.gogc, min_goal_bytes=cfg.gc.min_goal_mib << 20,
                nsweepers=cfg.sweep.sweepers, dead_after_s=cfg.control.dead_after_ms / 1000),
                sweepgen=self.heap.sweepgen, now=time.monotonic())
            self.totals = Totals()
            self.debug: dict[str, Any] = {
                "cycles_checked": 0, "spans_checked": 0, "exactly_once_violations": 0,
                "conservation_checks": 0, "conservation_gap": 0}
            self._sweep_counts: tuple[Any, Any] | None = None
            self.sup = Supervisor(mp.get_context("spawn"), self._target)
            self.heap.header[H_HEAP_GOAL] = self.machine.goal_bytes
            self.heap.header[H_MEMORY_LIMIT] = cfg.scavenger.memory_limit_mib << 20
            self.metrics_addr = ""
            self._publish()  # the first snapshot exists before anything can read it
            self.metrics = Metrics(lambda: self.snap, self._sample, Kernel(
                self.heap.arena_backed_bytes, self.heap.meta_backed_bytes,
                lambda: meminfo("Shmem")))
            self.metrics_addr = self.metrics.serve(cfg.metrics.addr)
            self._publish()
            undo.pop_all()

    # --- processes ---------------------------------------------------------------------------

    def _target(self, slot: Slot) -> tuple[Any, tuple]:
        hb = self.cfg.control.heartbeat_ms
        handle = self.heap.handle.to_dict()
        endpoint = f"ipc://{self.ipc_dir}/workers.sock"
        if slot.role is Role.SWEEPER:
            from workers.sweeper import main

            return main, (handle, slot.id, endpoint, self.cfg.sweep.chunk_pages, hb)
        if slot.role is Role.SCAVENGER:
            from workers.scavenger import main as scav_main

            sc = self.cfg.scavenger
            return scav_main, (handle, endpoint, sc.cpu_fraction, os.cpu_count() or 1,
                               sc.vectored, hb)
        from workers.mutator import main as mut_main

        return mut_main, (handle, slot.id, endpoint, self.cfg.mutators.workload().to_dict(), hb,
                          self.cfg.run.debug_checks)

    def start_all(self) -> None:
        slots = ([Slot(Role.SWEEPER, i) for i in range(self.cfg.sweep.sweepers)]
                 + [Slot(Role.MUTATOR, j) for j in range(self.cfg.mutators.count)])
        if self.cfg.scavenger.enabled:
            slots.append(Slot(Role.SCAVENGER, 0))
        for s in slots:
            self._start(s)

    def _start(self, slot: Slot) -> None:
        self.sup.start(slot)
        self._feed(c.Started(slot, time.monotonic()))

    def _reap(self) -> None:
        for slot, pid, code in self.sup.reap_dead():
            _log(f"{slot} (pid {pid}) died (exit {code}); recovering"
                 + ("" if self.stopping else " and starting a replacement"))
            self.totals.died(slot)
            self._feed(c.Died(slot))

    # --- the machine ---------------------------------------------------------------------------

    def _feed(self, ev: c.Event) -> None:
        """Hand the machine an event of our own making and carry out what it says."""
        self._carry_out(self.machine.handle(ev))

    def _peer(self, ev: c.Event) -> bool:
        """An event a peer's frame caused: refused and counted if the machine says it is not
        legal now.  Returns whether it was accepted."""
        try:
            actions = self.machine.handle(ev)
        except c.IllegalTransition:
            self.totals.control_error("unexpected")
            return False
        self._carry_out(actions)
        return True

    def _carry_out(self, actions: list[c.Action]) -> None:
        for a in actions:
            answer = self._do(a)
            if answer is not None:
                self._feed(answer)

    def _do(self, a: c.Action) -> c.Event | None:
        heap = self.heap
        if isinstance(a, c.MeasureHeap):
            hs = heap_stats(heap)
            return c.HeapMeasured(hs.objects_bytes, hs.free_bytes + hs.released_bytes,
                                  hs.heap_bytes)
        if isinstance(a, c.MeasureLive):
            spans = heap.in_use_spans()
            return c.LiveMeasured(marked_bytes(heap), int(heap.span_npages[spans].sum()))
        if isinstance(a, c.MeasureSweep):
            return c.SweepMeasured(shards.remaining_pages(heap), shards.in_flight(heap),
                                   int(shards.unfinished(heap).size),
                                   int(shards.unswept(heap).size))
        if isinstance(a, c.BeginSweep):
            self._begin_sweep(a)
        elif isinstance(a, c.SendMark):
            self._send(a.slots, "mark", cycle=a.cycle)
        elif isinstance(a, c.SendSweep):
            self._send(a.slots, "sweep", cycle=a.cycle)
        elif isinstance(a, c.SendResume):
            self._send(a.slots, "resume", cycle=a.cycle,
                       sweep_pages_per_byte=a.sweep_pages_per_byte)
        elif isinstance(a, c.SweepMissed):
            with heap.lock:
                left = shards.unswept(heap)
                mine = try_claim(heap.span_sweepgen, left, heap.sweepgen, heap.span_owner,
                                 owners.COORDINATOR)
            _log(f"{left.size} spans missed by the shards; sweeping {mine.size} of them")
            self.totals.coordinator_swept(sweep_batch(heap, mine))
        elif isinstance(a, c.EndCycle):
            self._end_cycle(a)
        elif isinstance(a, c.Kill):
            _log(f"{a.slot} silent for {a.silent_s:.1f}s: killing it")
            self.sup.kill(a.slot)
        elif isinstance(a, c.Recover):
            self._recover(a.slot)
        elif isinstance(a, c.Restart):
            self._start(a.slot)
        return None

    def _begin_sweep(self, a: c.BeginSweep) -> None:
        heap = self.heap
        if self.cfg.run.debug_checks:  # nothing moves now: mutators wait, sweepers are done
            self.debug["conservation_checks"] += 1
            self.debug["conservation_gap"] = check.conservation_gap(
                heap, int(self.totals.mutator.get("objects_allocated", 0)),
                sum(s.objects_freed for s in self.totals.swept.values()))
        heap.header[H_HEAP_GOAL] = a.goal_bytes  # the scavenger's retain goal follows
        with heap.lock:
            if heap.sweepgen + 2 != a.sweepgen:
                raise c.CycleInvariantBroken(
                    f"heap sweepgen {heap.sweepgen}, machine begins sweep {a.sweepgen}")
            heap.header[H_SWEEPGEN] = a.sweepgen
            shards.assign(heap, a.nshards)
        if self.cfg.run.debug_checks:
            self._sweep_counts = check.sweep_counts(heap)

    def _end_cycle(self, a: c.EndCycle) -> None:
        self.totals.sweep_phase_seconds(a.sweep_seconds)
        if self._sweep_counts is not None:
            spans, before = self._sweep_counts
            self.debug["cycles_checked"] += 1
            self.debug["spans_checked"] += int(spans.size)
            self.debug["exactly_once_violations"] += check.exactly_once_violations(
                self.heap, spans, before)
            self._sweep_counts = None
        with self.heap.lock:
            fs, _ = run_finalizers(self.heap)
        self.totals.finalizers_run += int(fs.size)

    def _recover(self, slot: Slot) -> None:
        calls = dict(self.sysmem.calls)
        rec = recovery.recover(self.heap, slot.role.value, slot.id, self.sysmem)
        self.totals.coordinator_swept(rec.swept)
        self.totals.coordinator_released(rec.released, {
            k: v - calls.get(k, 0) for k, v in self.sysmem.calls.items()})
        if rec.alloc_counts_repaired:
            _log(f"repaired allocCount of {rec.alloc_counts_repaired} spans from their bitmaps")

    # --- messages ----------------------------------------------------------------------------

    def _send(self, slots: tuple[Slot, ...], mtype: str, **f: Any) -> None:
        frame = protocol.encode(mtype, **f)
        for s in slots:
            ident = self.sup.identity(s)
            if ident is not None:
                self.wsock.send_multipart([ident, frame])

    def _on_worker_frame(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.totals.control_error("multipart")
            return
        ident, frame = frames
        try:
            msg = protocol.decode(frame)
        except protocol.ProtocolError as e:
            self.totals.control_error(e.reason)
            return
        now = time.monotonic()
        if msg.type == "hello":
            slot = Slot(Role(msg["role"]), msg["id"])
            if not self.sup.bind(ident, slot, msg["pid"]):
                self.totals.control_error("unknown_worker")
                return
            self._peer(c.Hello(slot, now))
            return
        bound = self.sup.slot_of(ident)
        if bound is None:
            self.totals.control_error("unknown_worker")
            return
        role = bound.role
        if msg.type == "swept" and role is Role.SWEEPER:
            if self._peer(c.Swept(bound, msg["cycle"], now)):
                self.totals.sweeper_report(msg["stats"])
        elif msg.type == "marked" and role is Role.MUTATOR:
            self.totals.mutator_report(bound, msg["stats"])
            self._peer(c.Marked(bound, msg["cycle"], now))
        elif msg.type == "heartbeat":
            if role is Role.MUTATOR:
                self.totals.mutator_report(bound, msg["stats"])
            elif role is Role.SCAVENGER:
                self.totals.scavenger_report(bound, msg["stats"])
            self._peer(c.Heard(bound, now))
        else:
            self.totals.control_error("unexpected")

    def _on_client(self) -> None:
        frames = self.csock.recv_multipart()
        if len(frames) != 1:
            self.totals.control_error("multipart")
            self.csock.send(protocol.reply(False, error="one frame per request",
                                           reason="multipart"))
            return
        try:
            msg = protocol.decode(frames[0], protocol.CLIENT_TYPES)
        except protocol.ProtocolError as e:
            self.totals.control_error(e.reason)
            self.csock.send(protocol.error_reply(e))
            return
        if msg.type == "status":
            self.csock.send(protocol.reply(True, **self.status()))
        elif msg.type == "gc":
            self._feed(c.GcRequested())
            self.csock.send(protocol.reply(True, cycle=self.machine.cycles))
        elif msg.type == "scavenge":
            self.csock.send(protocol.reply(True, **self._free_os_memory()))
        else:
            self.csock.send(protocol.reply(True, pong=True))

    def _free_os_memory(self) -> dict[str, Any]:
        """Go's debug.FreeOSMemory: the scavenger does it, or we do it here and now."""
        slot = Slot(Role.SCAVENGER, 0)
        if self.sup.identity(slot) is not None:
            self._send((slot,), "release_all")
            return {"requested": True, "by": "scavenger"}
        calls = dict(self.sysmem.calls)
        r = scavenge.scavenge(self.heap, self.sysmem, self.heap.npages)
        self.totals.coordinator_released(r, {
            k: v - calls.get(k, 0) for k, v in self.sysmem.calls.items()})
        return {"released_bytes": r.kernel_bytes, "advised_bytes": r.bytes,
                "by": "coordinator"}

    # --- main loop ---------------------------------------------------------------------------

    def run(self, duration_s: float = 0) -> None:
        deadline = time.monotonic() + duration_s if duration_s else None
        poller = zmq.Poller()
        poller.register(self.wsock, zmq.POLLIN)
        poller.register(self.csock, zmq.POLLIN)
        self.start_all()
        self._publish()
        self.metrics.start_sampler()
        self.notify.ready(f"serving metrics on {self.metrics_addr}, control on "
                          f"{self.control_addr}")
        while not self.stopping and (deadline is None or time.monotonic() < deadline):
            self.notify.ping(time.monotonic())
            ready = dict(poller.poll(POLL_MS))
            while self.wsock in ready and self.wsock.poll(0):
                self._on_worker_frame(self.wsock.recv_multipart())
            if self.csock in ready:
                self._on_client()
            self._reap()
            self._feed(c.Tick(time.monotonic()))
            self._publish()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def close(self) -> None:
        """Drain: stop every child, reap it, close sockets, unmap and free the heap."""
        self.stopping = True
        self.machine.handle(c.Stopping())
        self.notify.stopping(f"draining after {self.machine.cycles} cycles")
        self._send(tuple(self.sup.procs), "stop")
        self.sup.stop_all(DRAIN_S)
        self.metrics.close()
        self.wsock.close()
        self.csock.close()
        self.zctx.term()
        self.heap.close()
        shutil.rmtree(self.ipc_dir, ignore_errors=True)
        if self.control_addr.startswith("ipc://"):
            with contextlib.suppress(OSError):
                os.unlink(self.control_addr[6:])

    # --- what others may read ----------------------------------------------------------------

    def _publish(self) -> None:
        m = self.machine
        self.snap = Snapshot(
            at=time.monotonic(), pid=os.getpid(), cycle=m.cycles, sweepgen=m.sweepgen,
            phase=m.phase.value, goal_bytes=m.goal_bytes, trigger_bytes=m.trigger_bytes,
            retain_goal_bytes=retain_goal(m.goal_bytes,
                                          self.cfg.scavenger.memory_limit_mib << 20),
            workers=self.sup.views(), **self.totals.freeze(),
            debug={**self.debug, "enabled": self.cfg.run.debug_checks},
            cpu_fraction_target=self.cfg.scavenger.cpu_fraction,
            heap_handle=self.heap.handle.to_dict(), control_addr=self.control_addr,
            ipc_dir=self.ipc_dir, metrics_addr=self.metrics_addr)

    def _processes(self, snap: Snapshot) -> list[dict[str, Any]]:
        """RSS and PSS of every process, labelled by role and slot (never summed: RSS counts
        the shared heap in each)."""
        out = []
        for role, wid, pid in snap.pids():
            pm = process_memory(pid)
            if pm is not None:
                out.append({"role": role, "id": wid, "pid": pid, "rss_bytes": pm.rss_bytes,
                            "pss_bytes": pm.pss_bytes})
        return out

    def _sample(self) -> Sample:
        """The sampler thread's figures: the shared heap's classes and the kernel's view of
        the processes named in the latest snapshot."""
        return Sample(time.monotonic(), heap_stats(self.heap), self._processes(self.snap))

    def memory(self) -> dict[str, Any]:
        """Memory as the kernel sees it now."""
        return {"heap_backed_bytes": self.heap.arena_backed_bytes(),
                "metadata_backed_bytes": self.heap.meta_backed_bytes(),
                "system_shmem_bytes": meminfo("Shmem"), "processes": self._processes(self.snap)}

    def status(self) -> dict[str, Any]:
        return status_json(self.snap, heap_stats(self.heap), self.memory(), self.sup.alive())
