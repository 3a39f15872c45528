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
import functools
import glob
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict
from types import MappingProxyType
from typing import Any

import zmq

from sweeperd.daemon import cycle as c
from sweeperd.daemon.config import Config
from sweeperd.daemon.cycle import Role, Slot
from sweeperd.daemon.gotrace import Tracer
from sweeperd.daemon.heapwork import HeapWork, log
from sweeperd.daemon.metrics import Kernel, Metrics
from sweeperd.daemon.snapshot import Snapshot, memory_now, status_json, take_sample
from sweeperd.daemon.supervisor import Supervisor
from sweeperd.daemon.totals import Totals
from sweeperd.errors import Throw
from sweeperd.pacing.policies import RELEASES_ON_FREE
from sweeperd.pacing.scavpace import retain_goal
from sweeperd.runtime import owners
from sweeperd.runtime.heap import H_HEAP_GOAL, H_MEMORY_LIMIT, T_RELEASED_PAGES, Heap
from sweeperd.runtime.heapstats import (
    cached_bytes,
    heap_stats,
    read_tallies,
    releasing_bytes,
)
from sweeperd.runtime.scavenge import ReleaseOnFree
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys.procmem import meminfo
from sweeperd.sys.procs import run_niced
from sweeperd.sys.sdnotify import Notifier
from sweeperd.sys.sysmem import SysMem
from sweeperd.wire import protocol
from sweeperd.wire.beat import last_beat_s
from sweeperd.workload import scenario as scenarios

POLL_MS = 10
MAX_FRAMES_PER_STEP = 1000
DRAIN_S = 5.0


def entry_point(cfg: Config, handle: dict[str, Any], endpoint: str,
                scenario: str | None,
                slot: Slot) -> tuple[Callable[..., None], tuple[Any, ...]]:
    """The process entry point for ``slot`` and its arguments: its main in workers/, run at
    ``control.worker_nice``.  ``scenario``: the scenario's TOML, or None (its clock comes
    with ``resume``)."""
    fn, args = _worker_main(cfg, handle, endpoint, scenario, slot)
    return run_niced, (cfg.control.worker_nice, fn, args)


def _worker_main(cfg: Config, handle: dict[str, Any], endpoint: str,
                 scenario: str | None,
                 slot: Slot) -> tuple[Callable[..., None], tuple[Any, ...]]:
    hb = cfg.control.heartbeat_ms
    eager = cfg.scavenger.policy in RELEASES_ON_FREE  # freers release what they free
    if slot.role is Role.SWEEPER:
        from workers.sweeper import main

        return main, (handle, slot.id, endpoint, cfg.sweep.chunk_pages, hb, eager)
    if slot.role is Role.SCAVENGER:
        from workers.scavenger import main as scav_main

        sc = cfg.scavenger
        return scav_main, (handle, endpoint, sc.cpu_fraction, os.cpu_count() or 1, sc.vectored,
                           hb, sc.policy, sc.policy_params())
    from workers.mutator import main as mut_main

    share = None if scenario is None else (scenario, 1 / cfg.mutators.count)
    return mut_main, (handle, slot.id, endpoint, cfg.mutators.workload().to_dict(), hb,
                      cfg.run.debug_checks, eager, share)


class WorkersKeepDying(RuntimeError):
    """One role died more than ``control.max_deaths`` times in ``control.death_window_s``."""


class StartError(RuntimeError):
    """The daemon cannot start; the message names what failed (an address and its key)."""


def private_parent() -> str:
    """Where the daemon's private directory goes: systemd's ``$RUNTIME_DIRECTORY`` (the first
    of its paths; ``RuntimeDirectory=`` in the unit) when it names a directory, else the
    system's temp directory."""
    rt = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return rt if rt and os.path.isdir(rt) else tempfile.gettempdir()


def remove_stale_dirs(tmp: str) -> list[str]:
    """Remove the private directories of sweeperd daemons that are gone (a coordinator killed
    with SIGKILL cannot remove its own): a ``sweeperd-*`` directory of ours whose ``pid`` file
    names no running process.  Returns what it removed."""
    removed = []
    for d in glob.glob(os.path.join(tmp, "sweeperd-*")):
        try:
            if os.stat(d).st_uid != os.getuid():
                continue
            with open(os.path.join(d, "pid")) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)  # alive: leave it
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        except (OSError, ValueError):
            continue  # no pid file (not ours to judge), unreadable, or not ours
    return removed


def open_sockets(zctx: zmq.Context, ipc_dir: str, control: str) -> tuple[zmq.Socket, zmq.Socket]:
    """The worker socket (ROUTER, ipc in the private 0700 dir) and the control socket (REP)."""
    wsock = zctx.socket(zmq.ROUTER)
    wsock.setsockopt(zmq.LINGER, 0)
    try:
        wsock.bind(f"ipc://{ipc_dir}/workers.sock")
    except zmq.ZMQError as e:
        raise StartError(f"worker socket ipc://{ipc_dir}/workers.sock: {e}") from e
    csock = zctx.socket(zmq.REP)
    csock.setsockopt(zmq.LINGER, 0)
    csock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # hard cap; over 64 KiB gets an error reply
    if control.startswith("tcp://") and control.endswith(":0"):
        control = control[:-2] + ":*"
    try:
        csock.bind(control)
    except zmq.ZMQError as e:
        raise StartError(f"control.addr {control}: {e}") from e
    return wsock, csock


class Coordinator:
    def __init__(self, cfg: Config) -> None:
        import multiprocess as mp

        self.cfg = cfg
        self.notify = Notifier.from_env()  # first: no worker may inherit NOTIFY_SOCKET
        self.stopping = False
        with contextlib.ExitStack() as undo:  # a failure part way releases what was made
            self.heap = Heap.create(cfg.heap.size_mib << 20)
            undo.callback(self.heap.close)
            self.heap.me = owners.COORDINATOR
            self._handle = MappingProxyType(self.heap.handle.to_dict())
            parent = private_parent()
            remove_stale_dirs(parent)
            self.ipc_dir = tempfile.mkdtemp(prefix="sweeperd-", dir=parent)  # 0700
            with open(os.path.join(self.ipc_dir, "pid"), "w") as f:
                f.write(str(os.getpid()))
            undo.callback(shutil.rmtree, self.ipc_dir, True)
            self.zctx = zmq.Context()
            undo.callback(self.zctx.destroy, 0)
            self.wsock, self.csock = open_sockets(self.zctx, self.ipc_dir, cfg.control.addr)
            self.control_addr = self.csock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.sysmem = SysMem(base=self.heap.arena.ctypes.data, size=self.heap.heap_bytes,
                                 shared=True)
            params = cfg.scavenger.policy_params()
            self._policy_params = MappingProxyType(asdict(params) if params else {})
            if cfg.scavenger.policy in RELEASES_ON_FREE:  # what recovery frees, it releases
                ReleaseOnFree.install(self.heap)  # (its own SysMem: tallied, not in ours)
            self.machine = c.GCCycle(c.Params(
                gogc=cfg.gc.gogc, min_goal_bytes=cfg.gc.min_goal_mib << 20,
                memory_limit_bytes=cfg.scavenger.memory_limit_mib << 20,
                nsweepers=cfg.sweep.sweepers, dead_after_s=cfg.control.dead_after_ms / 1000,
                restart_backoff_max_s=cfg.control.restart_backoff_max_ms / 1000,
                max_deaths=cfg.control.max_deaths, death_window_s=cfg.control.death_window_s),
                sweepgen=self.heap.sweepgen, now=time.monotonic())
            self.totals = Totals()
            self.trace = Tracer(cfg.run.gctrace, cfg.run.scavtrace, time.monotonic())
            self._beats_seen: dict[Slot, float] = {}
            self.work = HeapWork(self.heap, self.sysmem, self.totals, cfg.run.debug_checks)
            self.scenario = (scenarios.load(cfg.mutators.scenario) if cfg.mutators.scenario
                             else None)
            self.scenario_t0: float | None = None  # the schedule's zero: the first resume
            if self.scenario is not None:
                self._schedule = scenarios.Schedule(self.scenario)
            self.sup = Supervisor(mp.get_context("spawn"), functools.partial(
                entry_point, cfg, self.heap.handle.to_dict(),
                f"ipc://{self.ipc_dir}/workers.sock",
                None if self.scenario is None else self.scenario.to_toml()))
            self.heap.header[H_HEAP_GOAL] = self.machine.goal_bytes
            self.heap.header[H_MEMORY_LIMIT] = cfg.scavenger.memory_limit_mib << 20
            self.metrics_addr = ""
            self._publish()  # the first snapshot exists before anything can read it
            self.metrics = Metrics(lambda: self.snap, lambda: take_sample(self.snap), Kernel(
                self.heap.arena_backed_bytes, self.heap.meta_backed_bytes,
                lambda: meminfo("Shmem"), lambda: heap_stats(self.heap),
                lambda: releasing_bytes(self.heap), lambda: cached_bytes(self.heap)))
            try:
                self.metrics_addr = self.metrics.serve(cfg.metrics.addr)
            except OSError as e:
                raise StartError(f"metrics.addr {cfg.metrics.addr}: {e.strerror or e}") from e
            self._publish()
            undo.pop_all()

    # --- processes ---------------------------------------------------------------------------

    def start_all(self) -> None:
        slots = ([Slot(Role.SWEEPER, i) for i in range(self.cfg.sweep.sweepers)]
                 + [Slot(Role.MUTATOR, j) for j in range(self.cfg.mutators.count)])
        if self.cfg.scavenger.enabled:
            slots.append(Slot(Role.SCAVENGER, 0))
        for s in slots:
            self._start(s)

    def _heard_beats(self) -> None:
        """Workers busy in a long step still beat (wire/beat.py): they are heard."""
        for slot in self.sup.bound():
            t = last_beat_s(self.heap, owners.of(slot.role.value, slot.id))
            if t > self._beats_seen.get(slot, 0.0):
                self._beats_seen[slot] = t
                with contextlib.suppress(c.IllegalTransition):  # being killed: no news
                    self._carry_out(self.machine.handle(c.Heard(slot, t)))

    def _start(self, slot: Slot) -> None:
        self.sup.start(slot)
        self._feed(c.Started(slot, time.monotonic()))

    def _reap(self) -> None:
        for slot, pid, code in self.sup.reap_dead():
            log(f"{slot} (pid {pid}) died (exit {code}); recovering"
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
        hw = self.work
        if isinstance(a, c.MeasureHeap):
            return hw.measure_heap()
        if isinstance(a, c.MeasureLive):
            return hw.measure_live(a.reported_bytes)
        if isinstance(a, c.MeasureSweep):
            return hw.measure_sweep()
        if isinstance(a, c.BeginSweep):
            t = time.monotonic()
            self.trace.marked(t, self.heap.objects_bytes(), self.machine.marked_bytes,
                              self.totals.mutator.get("mark_seconds", 0.0))
            hw.begin_sweep(a)
            self.trace.mark_terminated(time.monotonic() - t)
        elif isinstance(a, c.SendMark):
            self.trace.triggered(time.monotonic(), self.heap.objects_bytes(),
                                 self.machine.goal_bytes, a.forced,
                                 self.totals.mutator.get("mark_seconds", 0.0))
            self._send(a.slots, "mark", cycle=a.cycle)
        elif isinstance(a, c.SendSweep):
            self._send(a.slots, "sweep", cycle=a.cycle)
        elif isinstance(a, c.SendResume):
            extra = {}
            if self.scenario is not None:  # its clock starts when the first mutator may run
                if self.scenario_t0 is None:
                    self.scenario_t0 = time.monotonic()
                extra["scenario_t0"] = self.scenario_t0
            self._send(a.slots, "resume", cycle=a.cycle,
                       sweep_pages_per_byte=a.sweep_pages_per_byte, **extra)
        elif isinstance(a, c.SweepMissed):
            hw.sweep_missed()
        elif isinstance(a, c.EndCycle):
            hw.end_cycle(a)
            if self.trace.on:
                self.trace.cycle_ended(a.cycles, time.monotonic(), *self._scav_figures())
        elif isinstance(a, c.Kill):
            log(f"{a.slot} silent for {a.silent_s:.1f}s: killing it")
            self.sup.kill(a.slot)
        elif isinstance(a, c.Recover):
            hw.recover(a.slot)
        elif isinstance(a, c.Restart):
            self._start(a.slot)
        elif isinstance(a, c.GiveUp):
            role = a.role.value
            raise WorkersKeepDying(
                f"{a.deaths} {role} deaths within {a.window_s:g}s (control.max_deaths); "
                f"the last {role} traceback:\n"
                + self.totals.last_crash.get(role, "(none: killed, or died before its hello)"))
        return None

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
            msg = protocol.decode(frame, protocol.FROM_WORKER)
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
            if self._peer(c.Swept(bound, msg["cycle"], now)):  # its work: in the tallies
                self.trace.swept(float(msg["stats"].get("seconds", 0.0)))
        elif msg.type == "marked" and role is Role.MUTATOR:
            self.totals.mutator_report(bound, msg["stats"])
            self._peer(c.Marked(bound, msg["cycle"], now, msg["marked_bytes"]))
        elif msg.type == "crashed":
            log(f"{bound} crashed:\n{msg['traceback'].rstrip()}")
            self.totals.last_crash[role.value] = msg["traceback"]
        elif msg.type == "heartbeat":
            if role is Role.MUTATOR:
                self.totals.mutator_report(bound, msg["stats"])
            elif role is Role.SCAVENGER:
                self.totals.scavenger_report(msg["stats"])
            self._peer(c.Heard(bound, now))
        else:
            self.totals.control_error("unexpected")

    def _on_client(self) -> None:
        """One request, exactly one reply (a REP socket wedges without it), whatever happens
        while serving it."""
        frames = self.csock.recv_multipart()
        try:
            out = self._answer(frames)
        except Throw:
            self.csock.send(protocol.reply(False, error="internal error", reason="internal"))
            raise
        except Exception:
            self._internal_error("control")
            out = protocol.reply(False, error="internal error (logged)", reason="internal")
        self.csock.send(out)

    def _answer(self, frames: list[bytes]) -> bytes:
        if len(frames) != 1:
            self.totals.control_error("multipart")
            return protocol.reply(False, error="one frame per request", reason="multipart")
        try:
            msg = protocol.decode(frames[0], protocol.CLIENT_TYPES)
        except protocol.ProtocolError as e:
            self.totals.control_error(e.reason)
            return protocol.error_reply(e)
        if msg.type == "status":
            return protocol.reply(True, **self.status())
        if msg.type == "gc":
            self._feed(c.GcRequested())
            return protocol.reply(True, cycle=self.machine.cycles)
        if msg.type == "scavenge":
            return protocol.reply(True, **self._free_os_memory())
        return protocol.reply(True, pong=True)

    def _internal_error(self, where: str) -> None:
        """An unexpected exception while serving one message: logged with its traceback and
        counted; the daemon goes on.  (A broken heap invariant, a Throw, is not caught.)"""
        log(f"internal error while serving a {where} message; going on:\n"
            + traceback.format_exc().rstrip())
        self.totals.internal_error(where)

    def _free_os_memory(self) -> dict[str, Any]:
        """Go's debug.FreeOSMemory: the scavenger does it, or we do it here and now."""
        slot = Slot(Role.SCAVENGER, 0)
        if self.sup.identity(slot) is not None:
            self._send((slot,), "release_all")
            return {"requested": True, "by": "scavenger"}
        out = {**self.work.free_os_memory(), "by": "coordinator"}
        self.trace.scavenged(*self._scav_figures(), forced=True)
        return out

    def _scav_figures(self) -> tuple[int, int, int, int]:
        """For a ``scav`` line: bytes ever released (the books: the scavenger's, the
        coordinator's and the freers'), released now, in use, free and backed."""
        hs = heap_stats(self.heap)
        pages = int(self.heap.tallies[:, T_RELEASED_PAGES].sum())
        return pages * PAGE_SIZE, hs.released_bytes, hs.in_use_bytes, hs.free_bytes

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
            for _ in range(MAX_FRAMES_PER_STEP):  # a flood cannot starve the loop
                if self.wsock not in ready or not self.wsock.poll(0):
                    break
                frames = self.wsock.recv_multipart()
                try:
                    self._on_worker_frame(frames)
                except Throw:
                    raise
                except Exception:
                    self._internal_error("worker")
            if self.csock in ready:
                self._on_client()
            self._reap()
            self._heard_beats()
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
        try:
            self.heap.close()
        except RuntimeError as e:  # views held by the frames of an exception still propagating
            log(f"{e}; the heap's memfds go when this process exits")
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
            live_bytes=m.live_bytes,
            retain_goal_bytes=retain_goal(m.goal_bytes,
                                          self.cfg.scavenger.memory_limit_mib << 20),
            workers=self.sup.views(), **self.totals.freeze(),
            debug=MappingProxyType({**self.work.debug, "enabled": self.cfg.run.debug_checks}),
            cpu_fraction_target=self.cfg.scavenger.cpu_fraction,
            policy=self.cfg.scavenger.policy, policy_params=self._policy_params,
            tallies=read_tallies(self.heap), heap_handle=self._handle,
            control_addr=self.control_addr, ipc_dir=self.ipc_dir,
            metrics_addr=self.metrics_addr, scenario=self._scenario_now())

    def _scenario_now(self) -> Mapping[str, Any]:
        if self.scenario is None:
            return MappingProxyType({})
        t0 = self.scenario_t0
        t = 0.0 if t0 is None else time.monotonic() - t0
        st = self._schedule.at(t)
        return MappingProxyType({
            "name": self.scenario.name, "elapsed_s": t, "seconds": self.scenario.seconds,
            # when it started, in the seconds of the gctrace lines' @ (None: not yet)
            "start_s": None if t0 is None else t0 - self.trace.t0,
            "phase": st.phase, "phase_name": self.scenario.phase[st.phase].name,
            "target_live_bytes": int(st.live_bytes)})

    def status(self) -> dict[str, Any]:
        return status_json(self.snap, heap_stats(self.heap),
                           memory_now(self.heap, self.snap, self.metrics.sampler.latest),
                           self.sup.alive())
