"""``sweeperd run`` inside a real memory cgroup (v1: ``memory.limit_in_bytes``) smaller than
what it is asked for: it refuses at start naming both figures (exit 2), or runs to the end with
its limit derived from the cgroup (``memory_limit_mib = "cgroup"``) and no worker death; and a
limit lowered under a running daemon, so that the kernel's OOM killer takes its workers, ends
in exit 6 naming memory, not a respawn loop; so do workers killed by SIGBUS.  A live heap over
the derived limit has its commits refused (counted) and waits for the GC, and nobody is killed.
Each test's cgroup is removed on every path, after every process in it is gone."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from sweeperd.errors import ExitCode
from sweeperd.wire import protocol

from .conftest import not_here

MIB = 1 << 20
V1 = Path("/sys/fs/cgroup/memory")
_n = itertools.count()


def _own_v1() -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrl, path = line.split(":", 2)
        if "memory" in ctrl.split(","):
            d = V1 / path.lstrip("/")
            return d if d.is_dir() else V1
    return None


@pytest.fixture
def memcg() -> Iterator[Path]:
    """A fresh child of this process's v1 memory cgroup; every process left in it is killed
    and the group removed at the end."""
    own = _own_v1()
    if own is None or not os.access(own, os.W_OK):
        not_here("needs a writable cgroup v1 memory controller (root); v2 hosts: memory.max "
                 "is read by sweeperd/sys/cgroup.py, tested over a fake tree in test_cgroup.py")
    d = own / f"sweeperd-test-{os.getpid()}-{next(_n)}"
    d.mkdir()
    try:
        yield d
    finally:
        deadline = time.monotonic() + 60
        while True:
            pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for p in pids:  # only the daemon's processes are in it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise AssertionError(f"processes stay in {d}: {pids}")
            time.sleep(0.1)
        while True:
            try:
                d.rmdir()
                break
            except OSError:  # the kernel lets go of an emptied group a little later
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _conf(tmp: Path, extra: str = "") -> Path:
    """A config file: ``extra``, and patience with silent workers — these tests are about
    memory, not liveness, and on a loaded 2-core machine a busy worker may go silent past the
    default 5 s and be killed as hung: a death that is not the one under test."""
    p = tmp / "sweeperd.toml"
    p.write_text(extra + "\n[control]\ndead_after_ms = 120000\n")
    return p


def _run_in(cg: Path, conf: Path, *args: str) -> subprocess.Popen[str]:
    def enter() -> None:
        (cg / "cgroup.procs").write_text(str(os.getpid()))

    ctl = tempfile.mkdtemp(prefix="sweeperd_m")  # short: a socket path; gone with the run
    cmd = [sys.executable, "-m", "sweeperd.cli", "run", "--control", f"ipc://{ctl}/control.sock",
           "--metrics-addr", "127.0.0.1:0", "--config", str(conf), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=enter)


def _finish(p: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"sweeperd run did not end in {timeout}s:\n{err[-4000:]}") from None
    finally:  # the control socket's directory (_run_in's), once the daemon is gone
        if p.returncode is not None:
            ctl = str(p.args[p.args.index("--control") + 1]).removeprefix("ipc://")
            shutil.rmtree(os.path.dirname(ctl), ignore_errors=True)
    return p.returncode, out, err


def test_a_heap_larger_than_the_cgroup_without_a_limit_is_refused_naming_both(memcg, tmp_path):
    (memcg / "memory.limit_in_bytes").write_text(str(320 * MIB))
    code, _, err = _finish(_run_in(memcg, _conf(tmp_path), "--scenario", "steady",
                                   "--duration", "5"), 120)
    assert code == ExitCode.USAGE, err
    assert "a heap of 2048 MiB" in err and "memory cgroup's limit of 320 MiB" in err, err


def test_a_memory_limit_above_the_cgroup_is_refused_naming_both(memcg, tmp_path):
    (memcg / "memory.limit_in_bytes").write_text(str(512 * MIB))
    conf = _conf(tmp_path, '[mutators]\nscenario = "memory-limit-squeeze"\n'
                 "[scavenger]\nmemory_limit_mib = 400\n")
    code, _, err = _finish(_run_in(memcg, conf, "--duration", "5"), 120)
    assert code == ExitCode.USAGE, err
    assert "scavenger.memory_limit_mib (400 MiB)" in err and "512 MiB" in err, err


def test_the_limit_derived_from_the_cgroup_runs_to_the_end_without_a_death(memcg, tmp_path):
    """steady asks for a 2 GiB heap in a 1 GiB cgroup: with the limit derived, it runs."""
    (memcg / "memory.limit_in_bytes").write_text(str(1024 * MIB))
    conf = _conf(tmp_path, '[mutators]\nscenario = "steady"\n'
                 '[scavenger]\nmemory_limit_mib = "cgroup"\n')
    code, out, err = _finish(_run_in(memcg, conf, "--duration", "20"), 180)
    peak = int((memcg / "memory.max_usage_in_bytes").read_text())
    print(f"\ncgroup peak {peak >> 20} MiB of its 1024 MiB limit")
    assert code == ExitCode.OK, err[-4000:]
    assert "died" not in out + err, (out + err)[-4000:]  # (deaths are on stdout)
    assert "stopping after" in out
    oom = (memcg / "memory.oom_control").read_text()
    assert "oom_kill 0" in oom, oom


def _addresses(p: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """(metrics URL, control address) as the daemon prints them."""
    deadline = time.monotonic() + timeout
    metrics = ""
    while time.monotonic() < deadline:
        line = p.stdout.readline() if p.stdout else ""
        if not line:
            raise AssertionError(f"sweeperd run ended early: {p.stderr.read() if p.stderr else ''}")
        if m := re.search(r"metrics on (http://\S+)", line):
            metrics = m.group(1)
        if m := re.search(r"control on ((?:tcp|ipc)://\S+)", line):
            return metrics, m.group(1)
    raise AssertionError(f"no control address in {timeout}s")


def _control(p: subprocess.Popen[str], timeout: float) -> str:
    return _addresses(p, timeout)[1]


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape")


def test_a_live_heap_over_the_derived_limit_waits_for_commits_and_nobody_is_killed(
        memcg, tmp_path):
    """700 MiB live asked under a limit derived from a 768 MiB cgroup: the kernel would
    OOM-kill a mutator writing past it; instead the commits are refused (counted), the
    mutators wait and the GC runs, and no worker dies."""
    (memcg / "memory.limit_in_bytes").write_text(str(768 * MIB))
    sc = tmp_path / "over.toml"
    sc.write_text('[scenario]\nname = "over"\nheap_mib = 2048\nmemory_limit_mib = "cgroup"\n\n'
                  '[[phase]]\nseconds = 15\nlive_mib = [0, 700]\ngarbage_mib_s = 16\n'
                  "size_classes = [40]\n\n"
                  '[[phase]]\nseconds = 300\nlive_mib = 700\ngarbage_mib_s = 16\n'
                  "size_classes = [40]\n")
    p = _run_in(memcg, _conf(tmp_path), "--scenario", str(sc), "--duration", "300")
    try:
        metrics, _ = _addresses(p, 60)
        deadline = time.monotonic() + 180
        while _metric(metrics, "sweeperd_heap_commit_failures_total") == 0:
            assert time.monotonic() < deadline, "no commit was refused in 180 s"
            assert p.poll() is None, "the daemon ended"
            time.sleep(1)
        cycles = _metric(metrics, "sweeperd_gc_cycles_total")
        deadline = time.monotonic() + 120
        while _metric(metrics, "sweeperd_gc_cycles_total") < cycles + 2:  # the GC runs
            assert time.monotonic() < deadline, "no GC cycle in 120 s after the refusals"
            time.sleep(0.5)
        assert _metric(metrics, 'sweeperd_worker_deaths_total{role="mutator"}') == 0
        p.send_signal(signal.SIGTERM)
        code, out, err = _finish(p, 120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert code == ExitCode.OK, err[-4000:]
    assert "died" not in out, out[-4000:]
    assert "oom_kill 0" in (memcg / "memory.oom_control").read_text()


def _wait_running(control: str, workers: int, timeout: float) -> None:
    """Until every worker is up and a GC cycle has ended (the mutators are allocating)."""
    zctx = zmq.Context()
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            s = zctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(control)
            s.send(protocol.encode("status"))
            if s.poll(10_000):
                st = json.loads(s.recv())
            s.close()
            if st.get("workers_alive") == workers and st.get("cycle", 0) >= 1:
                return
            time.sleep(0.2)
    finally:
        zctx.term()
    raise AssertionError(f"the daemon did not settle in {timeout}s: {st}")


def test_workers_killed_by_the_oom_killer_again_and_again_end_in_exit_6(memcg, tmp_path):
    """The cgroup is unlimited at start (so the start check passes and there is no commit
    limit), then its limit is lowered to just above what the daemon holds while its mutators
    keep growing the live heap: the kernel's OOM killer takes a mutator, then each
    replacement (workers raise their oom_score_adj: the coordinator is not the one taken)."""
    sc = tmp_path / "grow.toml"
    sc.write_text('[scenario]\nname = "grow"\nheap_mib = 1024\n\n'
                  '[[phase]]\nseconds = 120\nlive_mib = [0, 800]\ngarbage_mib_s = 8\n')
    p = _run_in(memcg, _conf(tmp_path), "--scenario", str(sc), "--duration", "150")
    try:
        _wait_running(_control(p, 60), 5, 120)
        deadline = time.monotonic() + 60
        while True:  # just above what it holds now: lowering below usage is refused (EBUSY)
            usage = int((memcg / "memory.usage_in_bytes").read_text())
            try:
                limit = usage + 48 * MIB
                (memcg / "memory.limit_in_bytes").write_text(str(limit))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
        code, out, err = _finish(p, 240)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert code == ExitCode.OUT_OF_MEMORY, err[-4000:]
    assert "out of memory" in err and "OOM killer" in err, err[-4000:]
    assert "died (killed by SIGKILL from the OOM killer (memory cgroup oom_kill" in out, out
    assert f"the memory cgroup's limit {limit >> 20} MiB" in err, err[-4000:]


@pytest.mark.parametrize("limit", [3, 1])
def test_workers_dying_of_sigbus_are_memory_deaths_and_end_in_exit_6(tmp_path, limit):
    """SIGBUS is what a write into a shared page the kernel cannot back gets: each mutator
    killed by it is named so and counted as a memory death, and the one past
    ``control.max_memory_deaths`` (default 3) ends the daemon with exit 6 (no cgroup needed:
    the signal is sent to real workers)."""
    from .daemon import Daemon

    extra = "" if limit == 3 else f"max_memory_deaths = {limit}\n"
    conf = tmp_path / "sweeperd.toml"
    conf.write_text(f"[control]\ndead_after_ms = 120000\n{extra}")
    d = Daemon("--heap-mib", "64", "--sweepers", "1", "--mutators", "1", "--config", str(conf))
    try:
        for i in range(limit + 1):
            st = d.wait_for(lambda s: any(w["role"] == "mutator" and w["state"] == "alive"
                                          for w in s["workers"]), what="a live mutator")
            assert st["memory_deaths"]["mutator"] == i
            victim = next(w for w in st["workers"] if w["role"] == "mutator")
            os.kill(victim["pid"], signal.SIGBUS)
            if i < limit:
                d.wait_for(lambda s, pid=victim["pid"], n=i + 1: s["memory_deaths"]["mutator"] == n
                           and all(w["pid"] != pid for w in s["workers"]),
                           what=f"memory death {i + 1} counted")
        code = d.proc.wait(120)
        out = d.proc.stdout.read() if d.proc.stdout else ""
        err = d.proc.stderr.read() if d.proc.stderr else ""
    finally:
        d.close()
    assert code == ExitCode.OUT_OF_MEMORY, err[-4000:]
    assert out.count("killed by SIGBUS: a page of the shared heap") == limit + 1, out[-4000:]
    assert f"out of memory: {limit + 1} worker deaths of memory" in err, err[-4000:]



def _run_hidden(cg: Path, conf: Path, *args: str) -> subprocess.Popen[str]:
    """``sweeperd run`` in ``cg`` with its cgroup files hidden, as ``ip netns exec`` does to
    /sys: a mount namespace of its own with a tmpfs over /sys/fs/cgroup."""
    def enter() -> None:
        (cg / "cgroup.procs").write_text(str(os.getpid()))

    ctl = tempfile.mkdtemp(prefix="sweeperd_m")
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount -t tmpfs none /sys/fs/cgroup && exec "$@"', "sh",
           sys.executable, "-m", "sweeperd.cli", "run", "--control", f"ipc://{ctl}/control.sock",
           "--metrics-addr", "127.0.0.1:0", "--config", str(conf), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=enter)


def test_a_memory_cgroup_hidden_by_a_remounted_sys_is_said_and_cgroup_refused(memcg, tmp_path):
    """The kernel enforces the 512 MiB limit; the daemon cannot read it: ``"cgroup"`` is
    refused naming the cgroup (not taken for an unlimited host), a plain run warns."""
    if shutil.which("unshare") is None:
        not_here("needs unshare(1) for a mount namespace")
    (memcg / "memory.limit_in_bytes").write_text(str(512 * MIB))
    own = "/" + str(memcg.relative_to(V1))
    conf = _conf(tmp_path, '[scavenger]\nmemory_limit_mib = "cgroup"\n')
    code, _, err = _finish(_run_hidden(memcg, conf, "--heap-mib", "64", "--duration", "5"), 120)
    assert code == ExitCode.USAGE, err
    assert 'scavenger.memory_limit_mib: "cgroup"' in err and "cannot be read here" in err, err
    assert f"names the v1 memory cgroup '{own}'" in err and "/sys/fs/cgroup holds: empty" in err
    plain = _conf(tmp_path)
    code, _, err = _finish(_run_hidden(memcg, plain, "--heap-mib", "64", "--sweepers", "1",
                                       "--mutators", "1", "--duration", "2"), 180)
    assert code == ExitCode.OK, err[-4000:]
    warning = [ln for ln in err.splitlines() if ln.startswith("sweeperd run: WARNING: ")]
    assert len(warning) == 1 and f"'{own}'" in warning[0], err[-4000:]
    # and where the files are visible, no warning: the same run outside the namespace
    code, _, err = _finish(_run_in(memcg, plain, "--heap-mib", "64", "--sweepers", "1",
                                   "--mutators", "1", "--duration", "2"), 180)
    assert code == ExitCode.OK and "WARNING" not in err, err[-4000:]
