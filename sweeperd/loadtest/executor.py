"""Where a load test's runs are carried out: the seam between the plan and the hosts.

Theory of operation
-------------------
The plan (:mod:`sweeperd.loadtest.main`) makes a list of runs; an *executor* carries each out
and hands back its result, and the summary and report never know which one did.  A run
crosses the seam as plain data: a :class:`Task` (the scenario the run follows as TOML, the
policy, its settings, the replay's forced requests, the sample period, the client's
sweeperd version) goes in; a :class:`Done` (the :class:`~sweeperd.loadtest.runner.RunResult`
with its rows, the settings as run, where and when it ran, and — from another host — the
run directory's files) comes out, both msgspec Structs encoded as msgpack (floats kept
exactly, NaN included; nothing executable).  Every executor calls the one run function,
:func:`execute`: a daemon run (:func:`~sweeperd.loadtest.runner.run_one`) or a reference
program's (:mod:`sweeperd.loadtest.references`).

Two executors: :class:`LocalExecutor` (the default: one run at a time on this host, each
sample reported as it is taken) and the Dask one (``--executor dask://HOST:PORT``,
:mod:`sweeperd.loadtest.dask_executor`, the only module that imports Dask: imported only when
asked for, by the load test).  :func:`parse_executor` checks the ``--executor`` text before
anything runs.

Invariants: a :class:`Done` answers the task of the same ``run_id`` (else the run is failed,
naming both); a file from another host is written only under a name of one plain path
component into that run's directory (:func:`safe_name`), at most :data:`MAX_FILE_BYTES` of it
(the tail, with a note that it was cut); ``started_at``/``ended_at`` are UTC ISO 8601.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import msgspec

from sweeperd.loadtest import references
from sweeperd.loadtest.outdir import CannotWrite, OutDir, atomic_write
from sweeperd.loadtest.runner import RunResult, run_one
from sweeperd.sys import gotool
from sweeperd.workload import scenario as scenarios

MAX_FILE_BYTES = 16 << 20  # of one file of a run directory sent back by another host
MAX_FILES = 64
LOCAL = "local"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

OnSample = Callable[[float], None] | None


class Task(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One run as sent to whoever carries it out."""

    index: int  # its place in the plan
    run_id: str
    scenario_toml: str  # the scenario the run follows (its start shifted), as the daemon reads it
    policy: str
    settings: dict[str, Any]
    given: list[str]  # the settings the policy entry named itself
    forced: list[tuple[float, str]]  # a replay's forced cycles: (s on the scenario's clock, kind)
    sample_s: float
    version: str  # the client's sweeperd version: a worker running another refuses the task


class Done(msgspec.Struct, forbid_unknown_fields=True):
    """A run carried out (or failed): the result, the settings as run, where and when."""

    index: int
    run_id: str
    result: RunResult
    settings: dict[str, Any]
    host: str
    worker: str  # "local", or the Dask worker's name
    started_at: str  # UTC ISO 8601
    ended_at: str
    machine: dict[str, Any]  # the host's (main.machine's fields)
    attempts: int = 1  # times the run was started (a worker lost mid-run: Dask ran it again)
    files: dict[str, bytes] = {}  # from another host: the run directory's files


class Events(Protocol):
    """What an executor tells the load test as runs go (progress)."""

    def started(self, index: int, where: str) -> OnSample: ...
    def finished(self, done: Done) -> None: ...
    def note(self, text: str) -> None: ...  # something the user should know (a warning)


class Executor(Protocol):
    name: str  # "local", "dask://HOST:PORT"

    def carry_out(self, tasks: list[Task], out: OutDir, events: Events) -> Iterator[Done]:
        """Each task's :class:`Done`, in the order they end; a run that fails is a Done with
        ``ok`` false and its error, never an exception.  KeyboardInterrupt (and the load
        test's SIGTERM) propagates once the runs in flight are stopped or cancelled."""
        ...

    def close(self) -> None: ...


def sweeperd_version() -> str:
    try:
        return importlib.metadata.version("sweeperd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def machine() -> dict[str, Any]:
    """This host: its name, CPUs, model, memory, kernel."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    u = os.uname()
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "cpu_model": model,
            "mem_total_bytes": mem, "kernel": f"{u.sysname} {u.release}", "arch": u.machine}


def execute(task: Task, rundir: Path, on_sample: OnSample = None, worker: str = LOCAL,
            send_files: bool = False) -> Done:
    """Carry out ``task`` in ``rundir`` (made if missing): the same for every executor.
    Any failure is the Done's (``ok`` false, the error named), never raised — but
    KeyboardInterrupt and other BaseExceptions, which stop the daemon and propagate."""
    started = now_iso()
    settings = dict(task.settings)
    res = RunResult("?", task.policy, ok=False)
    try:
        if task.version != sweeperd_version():
            raise RuntimeError(f"this host runs sweeperd {sweeperd_version()}, the load test "
                               f"{task.version}: install the same version on every host")
        sc = scenarios.parse(task.scenario_toml, f"run {task.run_id}'s scenario")
        res = RunResult(sc.name, task.policy, ok=False)
        rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ref = references.for_policy(task.policy)
        if ref is None:
            res = run_one(sc, task.policy, rundir, task.sample_s, on_sample, settings,
                          tuple(task.given), task.forced)
        else:
            res = ref.run(sc, rundir, task.sample_s, on_sample, settings)
            if res.go_version:
                settings["go_version"] = gotool.short_version(res.go_version, full=True)
    except (CannotWrite, OSError, ValueError, RuntimeError) as e:
        res = replace(res, ok=False, error=f"{type(e).__name__}: {e}")
    files = collect_files(rundir) if send_files else {}
    return Done(task.index, task.run_id, res, settings, socket.gethostname(), worker, started,
                now_iso(), machine(), files=files)


def collect_files(rundir: Path) -> dict[str, bytes]:
    """The run directory's regular files (no symlink followed), each at most
    :data:`MAX_FILE_BYTES` (its tail, after a line saying so)."""
    out: dict[str, bytes] = {}
    try:
        entries = sorted(os.scandir(rundir), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        if len(out) >= MAX_FILES or not safe_name(e.name) or not e.is_file(follow_symlinks=False):
            continue
        try:
            with open(e.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_FILE_BYTES:
                    f.seek(size - MAX_FILE_BYTES)
                    out[e.name] = (f"[sweeperd: the first {size - MAX_FILE_BYTES} bytes of "
                                   f"this file were cut on its host]\n").encode() + f.read()
                else:
                    out[e.name] = f.read()
        except OSError:
            continue
    return out


def safe_name(name: str) -> bool:
    """One plain path component: letters, digits, ``_.-``, not starting with a dot."""
    return bool(_NAME.match(name))


def write_files(out: OutDir, run_id: str, files: Mapping[str, bytes]) -> None:
    """A remote run's files into ``runs/<run_id>/`` (atomically; only safe names: others
    are dropped)."""
    if not files:
        return
    rundir = out.subdir("runs", run_id)
    for name, data in list(files.items())[:MAX_FILES]:
        if not safe_name(name):
            continue
        if name == "config.toml" and "scenario.toml" in files:
            data = repointed(data, (rundir / "scenario.toml").resolve())
        atomic_write(rundir / name, data[-MAX_FILE_BYTES - 200:])


def repointed(config: bytes, scenario: Path) -> bytes:
    """A run's config with its ``mutators.scenario`` (the path on the host that ran it, gone
    with its temporary directory) pointing at ``scenario``, as a local run's does; unchanged
    if it is not such a config."""
    try:
        text = config.decode()
        old = tomllib.loads(text)["mutators"]["scenario"]
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return config
    line = f"scenario = {scenarios.toml_string(str(old))}\n"
    if not isinstance(old, str) or text.count(line) != 1:
        return config
    return text.replace(line, f"scenario = {scenarios.toml_string(str(scenario))}\n").encode()


def encode(obj: Task | Done) -> bytes:
    return msgspec.msgpack.encode(obj)


def decode_task(raw: bytes) -> Task:
    return msgspec.msgpack.decode(raw, type=Task)


def decode_done(raw: bytes, task: Task) -> Done:
    """A Done for ``task``; ValueError naming what is wrong with it."""
    try:
        d = msgspec.msgpack.decode(raw, type=Done)
    except msgspec.DecodeError as e:
        raise ValueError(f"a malformed result for run {task.run_id}: {e}") from None
    if d.run_id != task.run_id or d.index != task.index:
        raise ValueError(f"the result for run {task.run_id} names run {d.run_id!r}")
    return d


def failed(task: Task, error: str, worker: str = "", host: str = "",
           started_at: str = "", attempts: int = 0) -> Done:
    """The Done of a run that did not come back (its worker lost, cancelled, malformed)."""
    sc_name = task.run_id
    with contextlib.suppress(scenarios.ScenarioError):
        sc_name = scenarios.parse(task.scenario_toml).name
    return Done(task.index, task.run_id, RunResult(sc_name, task.policy, ok=False, error=error),
                dict(task.settings), host, worker, started_at or now_iso(), now_iso(), {},
                attempts=attempts)


class LocalExecutor:
    """One run at a time on this host, in the output directory itself."""

    name = LOCAL

    def carry_out(self, tasks: list[Task], out: OutDir, events: Events) -> Iterator[Done]:
        for t in tasks:
            on_sample = events.started(t.index, LOCAL)
            try:
                rundir = out.subdir("runs", t.run_id)
            except CannotWrite as e:
                done = failed(t, str(e), LOCAL, socket.gethostname(), attempts=1)
            else:
                done = execute(t, rundir, on_sample)
            events.finished(done)
            yield done

    def close(self) -> None:
        pass


class ExecutorError(ValueError):
    """``--executor`` cannot be used (exit 2); the text says why."""


def parse_executor(text: str) -> tuple[str, str, int]:
    """``local`` or ``dask://HOST:PORT`` → (kind, host, port); :class:`ExecutorError` naming
    what is wrong.  Pure but for nothing: the host is not resolved here."""
    text = text.strip()
    if text == LOCAL:
        return LOCAL, "", 0
    m = re.fullmatch(r"dask://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})", text)
    if not m:
        raise ExecutorError(f"--executor {text!r}: expected local or dask://HOST:PORT "
                            "(a running Dask scheduler)")
    host, port = m.group(1), int(m.group(2))
    if not 1 <= port <= 65535:
        raise ExecutorError(f"--executor {text}: port {port} is not within 1..65535")
    if host.startswith("["):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ExecutorError(f"--executor {text}: [{host}] is not an IPv6 address") from None
    elif host.startswith(("-", ".")) or host.endswith("-") or ".." in host:
        raise ExecutorError(f"--executor {text}: {host!r} is not a host name")
    return "dask", host, port


def host_port(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 address in brackets (as ``--executor`` takes it back)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolves(host: str) -> bool:
    try:
        return bool(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, UnicodeError):
        return False


def is_loopback(host: str) -> bool:
    """Every address ``host`` resolves to is a loopback one (False if it does not resolve)."""
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return False
    try:
        return bool(addrs) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback
                                   for a in addrs)
    except ValueError:
        return False
