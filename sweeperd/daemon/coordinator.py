"""The coordinator: the shell around the GC cycle machine, the heap and the worker processes.

Theory of operation
-------------------
One process owns the heap, the sockets, the worker processes and the clock.  Before it makes
any of them it checks the platform (``sys/support.py``) and that the heap, or its memory limit,
fits what the host and the memory cgroup can back (``sys/cgroup.py``, :func:`plan_memory`,
which also resolves ``memory_limit_mib = "cgroup"`` and sets the heap's commit limit).  A
worker's death is named by its cause, and deaths of memory (the OOM killer, as the cgroup's
``oom_kill`` count tells, or SIGBUS) have their own limit in the cycle machine.  Its main loop,
every 10 ms (or as soon as a frame arrives):

1. reads worker frames and client requests, decoded into their message Structs
   (``wire/protocol.py``; the handlers ``match`` on the classes), and turns each into an event
   for the cycle machine (cycle.py), or into a refusal counted in ``control_errors`` — a
   peer's frame that is malformed, from an unknown identity, or untimely or not its role's to
   send (the machine's ``IllegalTransition``: the shell judges no legality itself) changes
   nothing; a worker's typed stats are counted (totals.py) only once the machine accepted
   the event they came with;
2. reaps worker processes that have exited (the machine then orders recovery and a restart);
3. feeds the machine a tick;
4. carries out every action the machine returns (sending messages, measuring the heap and
   answering with the measurement, advancing sweepgen and sharding, recovery, restarts);
5. publishes an immutable :class:`~sweeperd.daemon.snapshot.Snapshot`, the only thing the
   metrics thread and ``status`` read.

An action that cannot be carried out (an exception other than a heap invariant's ``Throw``)
moves the machine to its terminal ``BROKEN`` phase and ends the run with :class:`CycleBroken`
(exit 5, after the drain): the world is no longer what the machine believes.  The loop never
waits blindly for the heap lock: between ``LOCK_NB`` tries it answers ``status`` and kills a
holder that is a worker silent for ``control.dead_after_ms`` (a stopped process keeps its
flock; a dead one does not).  SIGHUP reloads what can change while running (:data:`RELOADABLE`).

All GC-cycle decisions are the machine's; all heap work is ``sweeperd.runtime``'s; this module
only connects them.  Nothing is lost when a worker dies: every decision is recomputed from the
shared heap, never from what a dead process knew.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from types import MappingProxyType
from typing import Any

import zmq

from sweeperd.daemon import control
from sweeperd.daemon import cycle as c
from sweeperd.daemon.config import Config, ControlConfig
from sweeperd.daemon.cycle import Slot
from sweeperd.daemon.gotrace import Tracer
from sweeperd.daemon.heapwork import HeapWork, log
from sweeperd.daemon.metrics import Kernel, Metrics
from sweeperd.daemon.snapshot import Snapshot, memory_now, status_json, take_sample
from sweeperd.daemon.supervisor import Supervisor
from sweeperd.daemon.totals import Totals
from sweeperd.errors import Throw, ThrownByWorker
from sweeperd.pacing.policies import releases_on_free
from sweeperd.pacing.scavpace import retain_goal
from sweeperd.roles import Role
from sweeperd.runtime import kernels, owners
from sweeperd.runtime.heap import (
    H_COMMIT_LIMIT,
    H_HEAP_GOAL,
    H_MEMORY_LIMIT,
    T_ASSIST_RELEASED_PAGES,
    T_RELEASED_PAGES,
    Heap,
)
from sweeperd.runtime.heapstats import (
    books,
    heap_stats,
    read_tallies,
)
from sweeperd.runtime.scavenge import ReleaseOnFree
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys import cgroup, failpoint
from sweeperd.sys.procmem import meminfo
from sweeperd.sys.procs import run_niced
from sweeperd.sys.sdnotify import Notifier
from sweeperd.sys.shm import LockTimeout
from sweeperd.sys.sysmem import SysMem, check_platform
from sweeperd.wire import protocol
from sweeperd.wire.beat import last_beat_s
from sweeperd.workload import scenario as scenarios

POLL_MS = 10
MAX_FRAMES_PER_STEP = 1000
DRAIN_S = 5.0
# A control request that needs the heap lock waits this long at most (a REP socket answers
# nobody else meanwhile), then says busy; the loop's own waits answer status (_lock_wait).
REQUEST_LOCK_WAIT_S = 0.5


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
    eager = releases_on_free(cfg.scavenger.policy,  # freers release what they free
                             cfg.scavenger.policy_params())
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
    assist = (cfg.scavenger.enabled and cfg.scavenger.policy == "go"
              and cfg.scavenger.go.version != "1.19")  # Go 1.21's scavenge assist
    return mut_main, (handle, slot.id, endpoint, cfg.mutators.workload().to_dict(), hb,
                      cfg.run.debug_checks, eager, share, assist)


class WorkersKeepDying(RuntimeError):
    """One role died more than ``control.max_deaths`` times in ``control.death_window_s``."""


class MemoryDeaths(RuntimeError):
    """Workers kept dying of memory (the OOM killer, SIGBUS): ``sweeperd run`` exits 6."""


def plan_memory(cfg: Config, host: cgroup.HostMemory) -> tuple[Config, int]:
    """The start check of ``sys/cgroup.py`` for this config: ``cfg`` with a memory limit of
    ``"cgroup"`` resolved (whole MiB), and the heap's commit limit in bytes — the cgroup's
    limit less the daemon's own processes, or 0 (none) outside a limited cgroup, where the
    host's shortage is the kernel's to report (MemAvailable moves; a snapshot of it is no
    ceiling).  Raises ``cgroup.TooLarge`` or ``cgroup.NoCgroupLimit``."""
    nproc = 2 + cfg.sweep.sweepers + cfg.mutators.count + int(cfg.scavenger.enabled)
    over = cgroup.overhead_bytes(nproc, cfg.mutators.count, cfg.heap.size_mib << 20)
    if cfg.scavenger.memory_limit_mib == "cgroup":
        mib = cgroup.derive_limit(host, over) >> 20
        cfg = replace(cfg, scavenger=replace(cfg.scavenger, memory_limit_mib=mib))
    cgroup.check_fit(cfg.heap.size_mib << 20, cfg.scavenger.memory_limit_bytes(), host, over)
    return cfg, (0 if host.cgroup_limit is None else max(host.cgroup_limit - over, 0))


def death_cause(code: int | None, oom_kills: int | None) -> tuple[bool, str]:
    """Whether a worker that ended with exit ``code`` (negative: the signal) died of memory,
    and how it died, in words.  ``oom_kills``: the memory cgroup's oom_kill count when it rose
    for this death (a SIGKILL then came from the OOM killer, not from us), else None."""
    if code is None or code >= 0:
        return False, f"exit {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if code == -signal.SIGKILL and oom_kills is not None:
        return True, f"killed by {name} from the OOM killer (memory cgroup oom_kill {oom_kills})"
    if code == -signal.SIGBUS:
        return True, f"killed by {name}: a page of the shared heap the kernel could not back"
    return False, f"killed by {name}"


class CycleBroken(RuntimeError):
    """The cycle machine went BROKEN; the message names the phase, the action and the cause."""


class HeapLockAbandoned(RuntimeError):
    """Asked to stop while the heap lock's holder can neither answer nor die (a frozen
    cgroup): the action that waited for it is abandoned (the machine goes BROKEN)."""


class StartError(RuntimeError):
    """The daemon cannot start; the message names what failed (an address and its key)."""


def _proc_state(pid: int) -> str:
    """``state T`` (stopped), ``state S`` ...: the holder's state as /proc says, for a log."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return "state " + f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


#: Config keys a SIGHUP applies (dotted; a prefix ending in "." covers a policy's table):
#: GOGC and the minimum goal (the next mark's goal), the trace flags, the scavenger's CPU
#: budget and policy parameters (the scavenger is restarted with them).
RELOADABLE = ("gc.gogc", "gc.min_goal_mib", "run.gctrace", "run.scavtrace",
              "scavenger.cpu_fraction", "scavenger.jemalloc_decay.",
              "scavenger.gperftools_rate.", "scavenger.mimalloc_delay.")


def _reloadable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RELOADABLE)


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts (sorted)."""
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


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


# A peer's frames are bounded whatever it sends: one a little over protocol.MAX_FRAME is read
# and answered "oversized"; a larger one drops its connection before it is buffered.  At most
# CONTROL_HWM requests wait per connection (then the kernel's socket buffer, then the peer
# blocks), and replies a peer does not read are dropped past CONTROL_HWM (a REP socket routes).
CONTROL_MAX_MSG = protocol.MAX_FRAME + 4096
CONTROL_HWM = 2


@dataclass
class ControlSocket:
    """The control socket (REP) and what must go with it: the ipc file we bound, the CURVE
    authenticator's thread and its allowed keys."""

    sock: zmq.Socket
    addr: str  # where clients connect (printed at start)
    bound: control.Bound | None = None
    auth: Any = None  # zmq.auth.thread.ThreadAuthenticator
    allowed: control.AllowedKeys | None = None

    def close(self) -> None:
        self.sock.close()
        if self.auth is not None:
            self.auth.stop()
        if self.bound is not None:  # never a file another daemon or user put there
            control.unlink_if_ours(self.bound)


def open_sockets(zctx: zmq.Context, ipc_dir: str,
                 cc: ControlConfig) -> tuple[zmq.Socket, ControlSocket]:
    """The worker socket (ROUTER, ipc in the private 0700 dir) and the control socket (REP:
    ipc of mode 0600/0660, or tcp with CURVE; see control.py)."""
    wsock = zctx.socket(zmq.ROUTER)
    wsock.setsockopt(zmq.LINGER, 0)
    try:
        wsock.bind(f"ipc://{ipc_dir}/workers.sock")
    except zmq.ZMQError as e:
        wsock.close()
        raise StartError(f"worker socket ipc://{ipc_dir}/workers.sock: {e}") from e
    try:
        return wsock, _control_socket(zctx, cc)
    except BaseException:
        wsock.close()
        raise


def _control_socket(zctx: zmq.Context, cc: ControlConfig) -> ControlSocket:
    addr = control.resolve(cc.addr)
    csock = zctx.socket(zmq.REP)
    out = ControlSocket(csock, addr)
    try:
        csock.setsockopt(zmq.LINGER, 0)
        csock.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX_MSG)
        csock.setsockopt(zmq.RCVHWM, CONTROL_HWM)
        csock.setsockopt(zmq.SNDHWM, CONTROL_HWM)
        if addr.startswith("ipc://"):
            _bind_ipc(out, cc)
            return out
        from zmq.auth.thread import ThreadAuthenticator

        cert = control.read_cert(cc.curve_server_key)
        out.allowed = control.AllowedKeys(control.read_allowed(cc.curve_allowed_clients))
        out.auth = ThreadAuthenticator(zctx)
        out.auth.start()
        out.auth.configure_curve_callback("*", out.allowed)
        csock.curve_secretkey = (cert.secret or "").encode()
        csock.curve_publickey = cert.public.encode()
        csock.curve_server = True
        bind = addr[:-2] + ":*" if addr.endswith(":0") else addr
        try:
            csock.bind(bind)
        except zmq.ZMQError as e:
            raise StartError(f"control.addr {bind}: {e}") from e
        out.addr = csock.getsockopt_string(zmq.LAST_ENDPOINT)
        return out
    except control.CertError as e:  # changed since the config was checked
        out.close()
        raise StartError(f"control.curve_*: {e}") from e
    except BaseException:
        out.close()
        raise


def _bind_ipc(out: ControlSocket, cc: ControlConfig) -> None:
    path = out.addr[6:]
    try:
        gid = control.group_id(cc.group) if cc.group else None
        if cc.addr == control.AUTO:
            d = os.path.dirname(path)
            mine = os.path.join(tempfile.gettempdir(), f"sweeperd.{os.geteuid()}")
            control.prepare_dir(d, gid, create=d == mine)
        out.bound = control.bind_ipc(path, gid)
    except (control.ControlSocketError, KeyError, OSError) as e:
        raise StartError(f"control.addr {cc.addr} ({path}): {e}") from e
    out.sock.setsockopt(zmq.USE_FD, out.bound.fd)  # zmq listens on our socket: it neither
    try:  # unlinks what is at the path at bind nor at close
        out.sock.bind(out.addr)
    except zmq.ZMQError as e:
        os.close(out.bound.fd)  # not zmq's yet
        raise StartError(f"control.addr {cc.addr} ({path}): {e}") from e


class Coordinator:
    def __init__(self, cfg: Config) -> None:
        import multiprocess as mp

        check_platform()  # elsewhere than Linux with memfd_create: named, exit 7
        kernels.enabled()  # built here, once, before the workers that load it start
        self.cgroup = cgroup.own_cgroup()
        host = cgroup.read_host()
        if host.unseen:  # the kernel enforces a limit we cannot read: say so, loudly
            os.write(2, f"sweeperd run: WARNING: {host.unseen}\n".encode())
        cfg, commit_limit = plan_memory(cfg, host)  # too large: named, exit 2
        self._oom_kills = cgroup.oom_kills(self.cgroup) or 0
        self.cfg = cfg
        self.notify = Notifier.from_env()  # first: no worker may inherit NOTIFY_SOCKET
        self.stopping = False
        self.reload_requested = False
        self.orphaned: int | None = None  # run(parent_pid=): the parent that went away
        # what SIGHUP reloads from: a callable giving the config anew (set by the CLI)
        self.reload_config: Callable[[], Config] | None = None
        with contextlib.ExitStack() as undo:  # a failure part way releases what was made
            self.heap = Heap.create(cfg.heap.size_mib << 20)
            undo.callback(self.heap.close)
            self.heap.me = owners.COORDINATOR
            self.heap.lock.waiter = self._lock_wait  # never a blind wait (see _lock_wait)
            self._lock_wait_since = self._holder_checked = 0.0
            self._lock_wait_of = (0.0, 0)  # (when the wait began, its holder's pid)
            self._handle = MappingProxyType(self.heap.handle.to_dict())
            parent = private_parent()
            remove_stale_dirs(parent)
            self.ipc_dir = tempfile.mkdtemp(prefix="sweeperd-", dir=parent)  # 0700
            with open(os.path.join(self.ipc_dir, "pid"), "w") as f:
                f.write(str(os.getpid()))
            undo.callback(shutil.rmtree, self.ipc_dir, True)
            self.zctx = zmq.Context()
            undo.callback(self.zctx.destroy, 0)
            self.wsock, self.control = open_sockets(self.zctx, self.ipc_dir, cfg.control)
            undo.callback(self.control.close)
            undo.callback(self.wsock.close)
            self.csock = self.control.sock
            self.control_addr = self.control.addr
            self._scavenge_pending = False  # a release_all sent, the scavenger not heard since
            self._handshakes_refused = 0
            self.sysmem = SysMem(base=self.heap.arena.ctypes.data, size=self.heap.heap_bytes,
                                 shared=True)
            params = cfg.scavenger.policy_params()
            self._policy_params = MappingProxyType(asdict(params) if params else {})
            if releases_on_free(cfg.scavenger.policy, params):  # what recovery frees, it releases
                ReleaseOnFree.install(self.heap)  # (its own SysMem: tallied, not in ours)
            self.machine = c.GCCycle(c.Params(
                gogc=cfg.gc.gogc, min_goal_bytes=cfg.gc.min_goal_mib << 20,
                memory_limit_bytes=cfg.scavenger.memory_limit_bytes(),
                nsweepers=cfg.sweep.sweepers, dead_after_s=cfg.control.dead_after_ms / 1000,
                start_after_s=cfg.control.start_after_ms / 1000,
                restart_backoff_max_s=cfg.control.restart_backoff_max_ms / 1000,
                max_deaths=cfg.control.max_deaths,
                max_memory_deaths=cfg.control.max_memory_deaths,
                death_window_s=cfg.control.death_window_s, limiter_procs=cfg.mutators.count),
                sweepgen=self.heap.sweepgen, now=time.monotonic())
            self.totals = Totals()
            self.trace = Tracer(cfg.run.gctrace, cfg.run.scavtrace, time.monotonic(),
                                version=cfg.scavenger.go.version)
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
            self.heap.header[H_MEMORY_LIMIT] = cfg.scavenger.memory_limit_bytes()
            self.heap.header[H_COMMIT_LIMIT] = commit_limit
            self.metrics_addr = ""
            self._publish()  # the first snapshot exists before anything can read it
            self.metrics = Metrics(lambda: self.snap, lambda: take_sample(self.snap), Kernel(
                self.heap.arena_backed_bytes, self.heap.meta_backed_bytes,
                lambda: meminfo("Shmem"), lambda: books(self.heap)))
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
        for slot in self.machine.greeted():
            t = last_beat_s(self.heap, owners.of(slot.role, slot.id))
            if t > self._beats_seen.get(slot, 0.0):
                self._beats_seen[slot] = t
                with contextlib.suppress(c.IllegalTransition):  # being killed: no news
                    self._carry_out(self.machine.handle(c.Heard(slot, t)))

    def _start(self, slot: Slot) -> None:
        self.sup.start(slot)
        self._feed(c.Started(slot, time.monotonic()))

    def _reap(self) -> None:
        dead = self.sup.reap_dead()
        if not dead:
            return
        kills = cgroup.oom_kills(self.cgroup)
        new_kills = 0 if kills is None else max(kills - self._oom_kills, 0)
        self._oom_kills = self._oom_kills if kills is None else kills
        for slot, pid, code in dead:
            oom = code == -signal.SIGKILL and new_kills > 0  # the cgroup's count says whose
            new_kills -= oom
            memory, why = death_cause(code, kills if oom else None)
            log(f"{slot} (pid {pid}) died ({why}); recovering"
                 + ("" if self.stopping else " and starting a replacement"))
            self.totals.died(slot, memory)
            if slot.role is Role.SCAVENGER:
                self._scavenge_pending = False
            self._feed(c.Died(slot, memory))

    # --- the heap lock --------------------------------------------------------------------------

    def _lock_wait(self, holder: int, began: float) -> None:
        """Between tries for the heap lock another process holds (FlockLock.waiter): answer
        read-only control requests, and kill the holder if it is a worker of ours silent for
        ``control.dead_after_ms`` (no frame and no beat: stopped, or hung) — the kernel then
        drops its lock, and the machine, told of the death by the next reap, has its claims
        recovered.  Asked to stop while one holder that is not ours, or cannot die, has kept
        the lock through this wait (``began``) for twice ``dead_after_ms``:
        :class:`HeapLockAbandoned`.  Holders that come and go are progress, not a hold."""
        now = time.monotonic()
        if (began, holder) != self._lock_wait_of:  # a new wait, or a new holder in it
            self._lock_wait_of, self._lock_wait_since = (began, holder), now
        self._serve_read_only()
        if now - self._holder_checked < 0.05:
            return
        self._holder_checked = now
        dead_after = self.cfg.control.dead_after_ms / 1000
        for slot, p in list(self.sup.procs.items()):
            if holder == 0 or p.pid != holder:
                continue
            m = self.machine.members.get(slot)
            heard = max(m.last_heard if m else 0.0,
                        last_beat_s(self.heap, owners.of(slot.role, slot.id)))
            if now - heard > dead_after and p.proc.is_alive():
                log(f"{slot} (pid {holder}) holds the heap lock and has been silent for "
                    f"{now - heard:.1f}s ({_proc_state(holder)}): killing it")
                self.sup.kill(slot)
        if self.stopping and now - self._lock_wait_since > 2 * dead_after:
            raise HeapLockAbandoned(
                f"stopping, and the heap lock is still held by pid {holder or '?'} "
                f"({_proc_state(holder)}) after {now - self._lock_wait_since:.1f}s")

    def _serve_read_only(self) -> None:
        """Answer ``status`` and ``ping`` while the loop is held up; anything else is refused
        (reason ``busy``: it would change what the action in progress is doing)."""
        try:
            if not self.csock.poll(0):
                return
            frames = self.csock.recv_multipart(zmq.NOBLOCK)
        except zmq.ZMQError:  # (inside a request already: a REP socket must answer it first)
            return
        try:
            msg = protocol.decode(frames[0], protocol.CLIENT_TYPES) if len(frames) == 1 else None
        except protocol.ProtocolError:
            msg = None
        if isinstance(msg, protocol.StatusMsg | protocol.PingMsg):
            try:
                out = self._answer(frames)
            except Exception:
                self._internal_error("control")
                out = protocol.reply(False, error="internal error (logged)", reason="internal")
        else:
            out = protocol.reply(False, error="busy: waiting for the heap lock; ask again",
                                 reason="busy")
            self.totals.control_request(protocol.kind(msg) if msg is not None else "invalid",
                                        "busy")
        self.csock.send(out)

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
        """Carry out the machine's actions in order.  One that fails (any exception but a
        heap invariant's Throw) leaves the world half-way from what the machine believes: the
        machine goes BROKEN and :class:`CycleBroken` ends the run (the rest are not done)."""
        for a in actions:
            try:
                answer = self._do(a)
            except (Throw, WorkersKeepDying, MemoryDeaths, CycleBroken):  # named ends of their own
                raise
            except Exception as e:
                self._broken(type(a).__name__, e)
            if answer is not None:
                self._feed(answer)

    def _broken(self, action: str, e: BaseException) -> None:
        log(f"could not carry out {action}:\n" + traceback.format_exc().rstrip())
        cause = f"{type(e).__name__}: {e}".rstrip(": ")
        with contextlib.suppress(c.IllegalTransition):  # (BROKEN already: the first cause)
            self.machine.handle(c.ActionFailed(action, cause))
        raise CycleBroken(f"cycle machine BROKEN: {self.machine.broken}") from e

    def _do(self, a: c.Action) -> c.Event | None:
        failpoint.fail(f"action.{type(a).__name__}")
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
                              self.totals.mutator.mark_seconds)
            hw.begin_sweep(a)
            self.trace.mark_terminated(time.monotonic() - t)
        elif isinstance(a, c.SendMark):
            self.trace.triggered(time.monotonic(), self.heap.objects_bytes(),
                                 self.machine.goal_bytes, a.forced,
                                 self.totals.mutator.mark_seconds)
            self._send(a.slots, protocol.MarkMsg(cycle=a.cycle))
        elif isinstance(a, c.SendSweep):
            self._send(a.slots, protocol.SweepMsg(cycle=a.cycle))
        elif isinstance(a, c.SendResume):
            if self.scenario is not None and self.scenario_t0 is None:  # its clock starts
                self.scenario_t0 = time.monotonic()  # when the first mutator may run
            self._send(a.slots, protocol.ResumeMsg(
                cycle=a.cycle, sweep_pages_per_byte=a.sweep_pages_per_byte,
                scenario_t0=None if self.scenario is None else self.scenario_t0))
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
        elif isinstance(a, c.GiveUp) and a.memory:
            now = cgroup.own_cgroup()  # its limit now (a container's may change under us)
            lim = now.limit_bytes if now else None
            raise MemoryDeaths(
                f"out of memory: {a.deaths} worker deaths of memory (the OOM killer or SIGBUS) "
                f"within {a.window_s:g}s, the last a {a.role.value}; the memory cgroup's limit "
                + (f"{lim >> 20} MiB" if lim is not None else "none")
                + f", its oom_kill count {self._oom_kills}; scavenger.memory_limit_mib "
                f"{self.cfg.scavenger.memory_limit_mib or 'none'}, heap {self.cfg.heap.size_mib}"
                " MiB: lower the heap or the memory limit, or give the daemon more memory")
        elif isinstance(a, c.GiveUp):
            role = a.role
            raise WorkersKeepDying(
                f"{a.deaths} {role} deaths within {a.window_s:g}s (control.max_deaths); "
                f"the last {role} traceback:\n"
                + self.totals.last_crash.get(role, "(none: killed, or died before its hello)"))
        return None

    # --- messages ----------------------------------------------------------------------------

    def _send(self, slots: tuple[Slot, ...], msg: protocol.CoordinatorMsg) -> None:
        frame = protocol.encode(msg)
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
        if isinstance(msg, protocol.HelloMsg):
            slot = Slot(msg.role, msg.id)
            if not self.sup.bind(ident, slot, msg.pid):
                self.totals.control_error("unknown_worker")
                return
            self._peer(c.Hello(slot, now))
            return
        bound = self.sup.slot_of(ident)
        if bound is None:
            self.totals.control_error("unknown_worker")
            return
        # whether it may say this now (its role, the phase, the cycle) is the machine's to
        # judge; what it reports is counted only once the machine accepted the event
        match msg:
            case protocol.SweptMsg(cycle=cycle, stats=stats):
                if self._peer(c.Swept(bound, cycle, now)):  # its work: in the tallies
                    self.trace.swept(stats.seconds)
            case protocol.MarkedMsg(cycle=cycle, stats=stats, marked_bytes=marked):
                if self._peer(c.Marked(bound, cycle, now, marked)):
                    self.totals.mutator_report(bound, stats)
            case protocol.CrashedMsg(traceback=tb, throw=throw):
                log(f"{bound} crashed:\n{tb.rstrip()}")
                self.totals.last_crash[bound.role] = tb
                if throw:  # a broken heap invariant: not a death to recover from
                    raise ThrownByWorker(str(bound), throw)
            case protocol.HeartbeatMsg(stats=stats):
                if not self._peer(c.Heard(bound, now, protocol.stats_role(stats))):
                    return
                match stats:
                    case protocol.MutatorStats():
                        self.totals.mutator_report(bound, stats)
                    case protocol.ScavengerStats():
                        self.totals.scavenger_report(stats)
                        if self._scavenge_pending:  # it answers release_all with one: the
                            # request done, Go's forced scav line (as when we do it ourselves)
                            self.trace.scavenged(*self._scav_figures(), forced=True)
                        self._scavenge_pending = False
            case _:
                self.totals.control_error("unexpected")

    def _on_client(self) -> None:
        """One request, exactly one reply (a REP socket wedges without it), whatever happens
        while serving it."""
        frames = self.csock.recv_multipart()
        self._serving = "invalid"
        try:
            out = self._answer(frames)
        except Throw:
            self.totals.control_request(self._serving, "error")
            self.csock.send(protocol.reply(False, error="internal error", reason="internal"))
            raise
        except Exception:
            self.totals.control_request(self._serving, "error")
            self._internal_error("control")
            out = protocol.reply(False, error="internal error (logged)", reason="internal")
        self.csock.send(out)

    def _answer(self, frames: list[bytes]) -> bytes:
        if len(frames) != 1:
            self.totals.control_error("multipart")
            self.totals.control_request("invalid", "error")
            return protocol.reply(False, error="one frame per request", reason="multipart")
        try:
            msg = protocol.decode(frames[0], protocol.CLIENT_TYPES)
        except protocol.ProtocolError as e:
            self.totals.control_error(e.reason)
            self.totals.control_request("invalid", "error")
            return protocol.error_reply(e)
        self._serving = kind = protocol.kind(msg)
        pending = frozenset((["gc"] if self.machine.force else [])
                            + (["scavenge"] if self._scavenge_pending else []))
        d = control.decide(kind, self.cfg.control.admin, pending)
        if d.outcome == "refused":
            out = protocol.reply(False, error=d.error, reason="admin_disabled")
        elif d.outcome == "coalesced":  # the pending one does it: nothing more is started
            out = protocol.reply(True, coalesced=True, cycle=self.machine.cycles)
        else:
            match msg:
                case protocol.StatusMsg():
                    out = protocol.reply(True, **self.status())
                case protocol.GcMsg():
                    self._feed(c.GcRequested())
                    out = protocol.reply(True, cycle=self.machine.cycles, coalesced=False)
                case protocol.ScavengeMsg():
                    try:
                        out = protocol.reply(True, coalesced=False, **self._free_os_memory())
                    except LockTimeout as e:  # (a request never waits long: status waits too)
                        out = protocol.reply(False, error=f"busy: {e}; ask again",
                                             reason="busy")
                        d = control.Decision("busy", False)
                case _:
                    out = protocol.reply(True, pong=True)
        self.totals.control_request(kind, d.outcome)
        return out

    def _count_handshakes(self) -> None:
        """CURVE clients the authenticator refused (its thread counts; we copy)."""
        allowed = self.control.allowed
        if allowed is not None and allowed.refused > self._handshakes_refused:
            self.totals.control_request("handshake", "refused",
                                        allowed.refused - self._handshakes_refused)
            self._handshakes_refused = allowed.refused

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
            self._send((slot,), protocol.ReleaseAllMsg())
            self._scavenge_pending = True
            return {"requested": True, "by": "scavenger"}
        with self.heap.lock.within(REQUEST_LOCK_WAIT_S):
            out = {**self.work.free_os_memory(), "by": "coordinator"}
        self.trace.scavenged(*self._scav_figures(), forced=True)
        return out

    def _scav_figures(self) -> tuple[int, int, int, int, int]:
        """For a ``scav`` line: bytes ever released (the books: the scavenger's, the
        coordinator's and the freers'), released now, in use, free and backed, and of the
        first, bytes ever released by allocation (Go 1.21's eager)."""
        hs = heap_stats(self.heap)
        pages = int(self.heap.tallies[:, T_RELEASED_PAGES].sum())
        eager = int(self.heap.tallies[:, T_ASSIST_RELEASED_PAGES].sum())
        return (pages * PAGE_SIZE, hs.released_bytes, hs.in_use_bytes, hs.free_bytes,
                eager * PAGE_SIZE)

    # --- main loop ---------------------------------------------------------------------------

    def run(self, duration_s: float = 0, parent_pid: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT, ``duration_s`` (0: none), or, with ``parent_pid``,
        until the daemon's parent is no longer that process (:attr:`orphaned` says so)."""
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
            if parent_pid is not None and os.getppid() != parent_pid:
                self.orphaned = parent_pid
                break
            self.notify.ping(time.monotonic())
            ready = dict(poller.poll(POLL_MS))
            for _ in range(MAX_FRAMES_PER_STEP):  # a flood cannot starve the loop
                if self.wsock not in ready or not self.wsock.poll(0):
                    break
                frames = self.wsock.recv_multipart()
                try:
                    self._on_worker_frame(frames)
                except (Throw, CycleBroken, c.CycleInvariantBroken, WorkersKeepDying):
                    raise
                except Exception:
                    self._internal_error("worker")
            if self.csock in ready:
                self._on_client()
            self._reap()
            self._heard_beats()
            self._feed(c.Tick(time.monotonic()))
            self._count_handshakes()
            self._publish()
            if self.reload_requested:
                self._reload()
            if self.machine.broken is not None:  # (however it got there)
                raise CycleBroken(f"cycle machine BROKEN: {self.machine.broken}")
            failpoint.fail("shell.step")

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self.stopping = True

        def hup(signum: int, frame: Any) -> None:
            self.reload_requested = True  # (done by the loop: a handler only sets a flag)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    # --- SIGHUP ---------------------------------------------------------------------------------

    def _reload(self) -> None:
        """SIGHUP: read the config again (``self.reload_config``: the file the daemon was
        started with, the environment and the flags, as at the start) and apply what can change
        while running (:data:`RELOADABLE`); anything else that changed is named and kept as it
        was.  A bad file, or any failure here, is logged and the running config kept: a
        reload never ends the daemon."""
        self.reload_requested = False
        if self.reload_config is None:
            log("SIGHUP: no config to reload from; ignored")
            return
        try:
            new = self.reload_config()
        except Exception as e:
            log(f"SIGHUP: config not reloaded, keeping the running one: {e}")
            return
        try:
            applied, kept = self._apply(new)
        except Exception:
            log("SIGHUP: reload failed part way; going on:\n" + traceback.format_exc().rstrip())
            return
        log("SIGHUP: reloaded " + (", ".join(applied) or "nothing (no reloadable key changed)")
            + (f"; not reloaded (a restart applies them): {', '.join(kept)}" if kept else ""))

    def _apply(self, new: Config) -> tuple[list[str], list[str]]:
        old = self.cfg
        changed = _changed_keys(asdict(old), asdict(new))
        applied = [k for k in changed if _reloadable(k)]
        kept = [k for k in changed if not _reloadable(k)]
        if not applied:
            return [], kept
        sc = dataclasses.replace(
            old.scavenger, cpu_fraction=new.scavenger.cpu_fraction,
            jemalloc_decay=new.scavenger.jemalloc_decay,
            gperftools_rate=new.scavenger.gperftools_rate,
            mimalloc_delay=new.scavenger.mimalloc_delay)
        cfg = dataclasses.replace(
            old, gc=new.gc, scavenger=sc,
            run=dataclasses.replace(old.run, gctrace=new.run.gctrace,
                                    scavtrace=new.run.scavtrace))
        self.cfg = cfg
        if not self.trace.stopped:  # (a trace stream that failed stays off)
            self.trace.gctrace, self.trace.scavtrace = cfg.run.gctrace, cfg.run.scavtrace
        self.machine.params = dataclasses.replace(
            self.machine.params, gogc=cfg.gc.gogc, min_goal_bytes=cfg.gc.min_goal_mib << 20)
        params = cfg.scavenger.policy_params()
        self._policy_params = MappingProxyType(asdict(params) if params else {})
        self.sup.target = functools.partial(
            entry_point, cfg, self.heap.handle.to_dict(), f"ipc://{self.ipc_dir}/workers.sock",
            None if self.scenario is None else self.scenario.to_toml())
        if any(k.startswith("scavenger.") for k in applied):  # its parameters are its args:
            self._send((Slot(Role.SCAVENGER, 0),), protocol.StopMsg())  # it stops, and is restarted
        return applied, kept

    def close(self) -> None:
        """Drain: stop every child, reap it, close sockets, unmap and free the heap."""
        self.stopping = True
        with contextlib.suppress(c.IllegalTransition):  # (BROKEN: nothing is legal)
            self.machine.handle(c.Stopping())
        self.notify.stopping(f"draining after {self.machine.cycles} cycles")
        self._send(tuple(self.sup.procs), protocol.StopMsg())
        self.sup.stop_all(DRAIN_S)
        self.metrics.close()
        self.wsock.close()
        self.control.close()
        self.zctx.term()
        try:
            self.heap.close()
        except RuntimeError as e:  # views held by the frames of an exception still propagating
            log(f"{e}; the heap's memfds go when this process exits")
        shutil.rmtree(self.ipc_dir, ignore_errors=True)

    # --- what others may read ----------------------------------------------------------------

    def _publish(self) -> None:
        m = self.machine
        self.snap = Snapshot(
            at=time.monotonic(), pid=os.getpid(), cycle=m.cycles, sweepgen=m.sweepgen,
            phase=m.phase.value, goal_bytes=m.goal_bytes, trigger_bytes=m.trigger_bytes,
            live_bytes=m.live_bytes,
            retain_goal_bytes=retain_goal(m.goal_bytes,
                                          self.cfg.scavenger.memory_limit_bytes()),
            workers=self.sup.views(self.machine.greeted()), **self.totals.freeze(),
            debug=MappingProxyType({**self.work.debug, "enabled": self.cfg.run.debug_checks}),
            cpu_fraction_target=self.cfg.scavenger.cpu_fraction,
            policy=self.cfg.scavenger.policy, policy_params=self._policy_params,
            tallies=read_tallies(self.heap), heap_handle=self._handle,
            control_addr=self.control_addr, ipc_dir=self.ipc_dir,
            metrics_addr=self.metrics_addr, scenario=self._scenario_now(),
            gc_limiter_enabled_s=0.0 if m.limiter is None else m.limiter.enabled_ns / 1e9,
            gogc=m.params.gogc, memory_limit_bytes=m.params.memory_limit_bytes)

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
