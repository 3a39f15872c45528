"""One load-test run: a real ``sweeperd run`` child following a scenario under one policy.

Theory of operation
-------------------
:func:`run_one` writes the run's scenario and config into its directory, starts
``python -m sweeperd.cli run --config ...`` (the real daemon: its heap, its processes) with
ephemeral loopback ports and Go's gctrace on, reads the addresses it prints, then samples it
(:mod:`sweeperd.loadtest.sampler`) every ``sample_s`` until the scenario's time is up; rows
start when the scenario does (the first mutator resumed), so that every counter's first row
is its baseline and the workers' start-up is not charged to the policy.  It stops
the daemon with SIGTERM (SIGKILL after ``STOP_S``) on every path, failures included, and keeps
its stderr as ``daemon.log``.  A daemon that exits early, or ``MAX_MISSES`` samples in a row
that fail, end the run with ``ok = False`` and the log's tail; the caller still writes the
report.

One daemon at a time: runs never compete for the cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sweeperd.loadtest.outdir import atomic_write
from sweeperd.loadtest.sampler import SAMPLE_S, Sampler
from sweeperd.workload.scenario import Scenario, toml_string

START_S = 60.0  # the daemon prints its addresses within this
STOP_S = 30.0  # then SIGKILL
MAX_MISSES = 20  # consecutive samples that fail (5 s at 250 ms) before the run is given up
TAIL_LINES = 40
CTL_PREFIX = "sweeperd_lt."  # + the load test's pid + "." + random: a run's control socket dir


@dataclass
class RunResult:
    scenario: str
    policy: str
    ok: bool
    rows: list[dict[str, int | float]] = field(default_factory=list)  # ints stay ints
    error: str = ""
    log_tail: str = ""
    gctrace: list[str] = field(default_factory=list)
    exit_code: int | None = None
    wall_s: float = 0.0
    go_version: str = ""  # go-runtime: the toolchain's `go version`
    allocator: str = ""  # c-*: the malloc the program found in itself ("jemalloc 5.3.0-...")
    # a replay's forced cycles and FreeOSMemory calls as sent: {"asked_s", "sent_s",
    # "request", "ok", "coalesced"} (asked_s: the trace's time on the scenario's clock)
    requests: list[dict[str, object]] = field(default_factory=list)


def config_text(sc_path: Path, policy: str, sc: Scenario, control: str = "ipc://auto",
                settings: Mapping[str, object] | None = None,
                given: Iterable[str] = (), admin: bool = False) -> str:
    """The child daemon's config: its control socket at ``control`` (ipc, in a private
    directory), read-only unless ``admin`` (a replay whose trace forced cycles sends them as
    ``gc`` and ``scavenge`` requests; otherwise a load test only asks for status).  The run's
    gogc and memory limit are the scenario's
    (:func:`sweeperd.loadtest.runspec.with_settings` put the run's there); the policy's own
    knobs of ``settings`` go to its ``[scavenger.<policy>]`` table, and the ``go`` model's
    ``version`` to ``[scavenger.go]`` when ``given`` (else the daemon's default)."""
    h = sc.scenario
    table = []
    for k, v in (settings or {}).items():
        if k in ("gogc", "memory_limit_mib", "go_version") or v is None:
            continue
        if k == "version" and (policy != "go" or k not in given):
            continue
        table.append(f"{k} = {json.dumps(v)}")
    return "\n".join([
        "[heap]", f"size_mib = {h.heap_mib}",
        "[gc]", f"gogc = {json.dumps(h.gogc)}",
        "[mutators]", f"scenario = {toml_string(str(sc_path))}",
        "[control]", f"addr = {toml_string(control)}", f"admin = {str(admin).lower()}",
        "[metrics]", 'addr = "127.0.0.1:0"',
        # the harness stops the daemon when the scenario's time is up; this is only the
        # backstop should the harness die.  The scenario starts when the first mutator
        # resumes, which the workers' start-up on a loaded host delays by seconds: counted
        # from the daemon's start, the backstop must outlast that start (START_S) too
        "[run]", f"duration_s = {sc.seconds + START_S + 30:g}", "gctrace = true",
        # and should the harness (or the Dask worker running it) be killed, the daemon stops
        # with it rather than run on beside the host's next run
        "exit_with_parent = true",
        # a replay that sends FreeOSMemory's scavenge gets Go's scav lines too, as its trace had
        f"scavtrace = {str(admin).lower()}",
        "[scavenger]", f'policy = "{policy}"',
        f"memory_limit_mib = {json.dumps(h.memory_limit_mib)}",
        *([f"[scavenger.{policy}]", *table] if table else []),
        ""])


def run_one(sc: Scenario, policy: str, rundir: Path, sample_s: float = SAMPLE_S,
            on_sample: Callable[[float], None] | None = None,
            settings: Mapping[str, object] | None = None,
            given: Iterable[str] = (),
            requests: Iterable[tuple[float, str]] = ()) -> RunResult:
    """Run ``sc`` under ``policy`` with ``settings`` (:func:`config_text`);
    ``on_sample(elapsed_s)`` after each sample.  ``requests``: (seconds on the scenario's
    clock, ``"gc"`` | ``"gc+scavenge"``), each sent at the first sample at or after its time
    (a replay's forced cycles: :func:`sweeperd.loadtest.replay.forced_requests`), what was
    sent and answered in ``RunResult.requests``."""
    todo = sorted(requests)
    rundir.mkdir(parents=True, exist_ok=True)
    sc_path = (rundir / "scenario.toml").resolve()
    atomic_write(sc_path, sc.to_toml())
    cfg_path = rundir / "config.toml"
    ctl_dir = control_dir()
    atomic_write(cfg_path, config_text(sc_path, policy, sc, f"ipc://{ctl_dir}/control.sock",
                                         settings, given, admin=bool(todo)))
    res = RunResult(sc.name, policy, ok=False)
    log_path = rundir / "daemon.log"
    t_start = time.monotonic()
    with log_path.open("w") as log, _removed(ctl_dir):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeperd.cli", "run", "--config", str(cfg_path)],
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        sampler: Sampler | None = None
        try:
            metrics, control = _addresses(proc)
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            sampler = Sampler(proc.pid, metrics, control)
            _sample_until(sc, proc, sampler, res, sample_s, on_sample, todo)
        except Exception as e:  # the run failed; the report says how
            res.ok, res.error = False, f"{type(e).__name__}: {e}"
        finally:
            if sampler is not None:
                sampler.close()
            res.exit_code = _stop(proc)
    res.wall_s = time.monotonic() - t_start
    text = log_path.read_text(errors="replace")
    res.gctrace = [ln for ln in text.splitlines() if ln.startswith("gc ")]
    if not res.ok:
        res.log_tail = "\n".join(text.splitlines()[-TAIL_LINES:])
        said = [ln for ln in text.splitlines() if ln.startswith("sweeperd")]
        if "exited before serving" in res.error and said:  # the daemon said why: show it
            res.error += f": {said[-1][:300]}"
    return res


def control_dir() -> str:
    """A private directory (0700, short: a socket path) for a run's control socket, named
    with this process's pid, so that one left by a load test that was killed (no ``finally``
    ran: SIGKILL, a Dask worker lost) is removed by the next run on the host
    (:func:`reap_stale_control_dirs`)."""
    reap_stale_control_dirs()
    return tempfile.mkdtemp(prefix=f"{CTL_PREFIX}{os.getpid()}.")


def reap_stale_control_dirs() -> list[str]:
    """Remove this uid's control directories whose load test's pid is gone; their paths.
    A directory of another user, a symlink, or a live (or unknown) pid's is left alone."""
    base, gone = tempfile.gettempdir(), list[str]()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return gone
    for e in entries:
        if not e.name.startswith(CTL_PREFIX):
            continue
        try:
            pid = int(e.name[len(CTL_PREFIX):].split(".", 1)[0])
            st = e.stat(follow_symlinks=False)
        except (ValueError, OSError):
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or pid <= 0 \
                or _alive(pid):
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        gone.append(e.path)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


@contextlib.contextmanager
def _removed(path: str) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _addresses(proc: subprocess.Popen[str]) -> tuple[str, str]:
    metrics = control = ""
    deadline = time.monotonic() + START_S
    assert proc.stdout is not None
    while not (metrics and control):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sweeperd run exited before serving (exit {proc.wait()})")
        if m := re.search(r"metrics on (http://\S+)", line):
            metrics = m.group(1)
        if m := re.search(r"control on ((?:tcp|ipc)://\S+)", line):
            control = m.group(1)
        if time.monotonic() > deadline:
            raise RuntimeError(f"sweeperd run did not print its addresses in {START_S:g} s")
    return metrics, control


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass


def _send_due(sampler: Sampler, todo: list[tuple[float, str]], elapsed: float,
              res: RunResult) -> None:
    """Send the requests whose time has come (``todo`` sorted; sent ones removed)."""
    while todo and todo[0][0] <= elapsed:
        at, what = todo.pop(0)
        for kind in what.split("+"):
            reply = sampler.ask(kind)
            res.requests.append({"asked_s": round(at, 3), "sent_s": round(elapsed, 3),
                                 "request": kind, "ok": bool(reply.get("ok")),
                                 "coalesced": bool(reply.get("coalesced")),
                                 **({"error": str(reply.get("error"))[:200]}
                                    if not reply.get("ok") else {})})


def _sample_until(sc: Scenario, proc: subprocess.Popen[str], sampler: Sampler,
                  res: RunResult, sample_s: float,
                  on_sample: Callable[[float], None] | None,
                  todo: list[tuple[float, str]] | None = None) -> None:
    nxt = time.monotonic()
    misses = 0
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited (code {proc.returncode}) during the run")
        try:
            row = sampler.take()
        except (OSError, TimeoutError, ValueError) as e:  # a slow scrape: the next one
            misses += 1
            if misses >= MAX_MISSES:
                raise RuntimeError(f"{misses} samples in a row failed; the last: {e}") from e
            nxt += sample_s
            time.sleep(max(0.0, nxt - time.monotonic()))
            continue
        misses = 0
        if row["scenario_elapsed_s"] > 0:  # from the scenario's start: not the start-up's
            res.rows.append(row)
        elapsed = row["scenario_elapsed_s"]
        if todo and elapsed > 0:
            _send_due(sampler, todo, elapsed, res)
        if on_sample is not None:
            on_sample(elapsed)
        if elapsed >= sc.seconds:
            res.ok = True
            return
        nxt += sample_s
        time.sleep(max(0.0, nxt - time.monotonic()))


def _stop(proc: subprocess.Popen[str]) -> int | None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the daemon and any worker left
            proc.wait()
    return proc.returncode
