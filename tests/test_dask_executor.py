"""``--executor dask://``: a load test's matrix on a real Dask scheduler and two real workers on
loopback, against the same matrix run locally; and a worker killed mid-run."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from . import dasklocal

pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(900)

SCENARIO = """
[scenario]
name = "{name}"
heap_mib = 64
[[phase]]
name = "ramp"
seconds = {ramp}
live_mib = [0, 24]
garbage_mib_s = 16
[[phase]]
name = "drop"
seconds = {idle}
live_mib = 4
garbage_mib_s = 8
"""


def _scenarios(tmp: Path, names_lengths: dict[str, tuple[int, int]]) -> list[str]:
    out = []
    for name, (ramp, idle) in names_lengths.items():
        p = tmp / f"{name}.toml"
        p.write_text(SCENARIO.format(name=name, ramp=ramp, idle=idle))
        out.append(str(p))
    return out


def _loadtest(*args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "loadtest", *args],
                       capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


def _when(s: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(s)
    assert t.utcoffset() == dt.timedelta(0), f"not UTC: {s}"
    return t


@pytest.fixture(scope="module")
def loopback(tmp_path_factory) -> dasklocal.Cluster:
    with dasklocal.cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


class _Term(Exception):
    pass


def _raise_term(_signum, _frame):
    raise _Term


def _signalled(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # (Python runs the handler at the next instruction: it has come by now)


def test_held_signals_wait_for_act_then_do_what_the_handlers_before_would():
    from sweeperd.loadtest.dask_executor import _HeldSignals

    before = signal.signal(signal.SIGTERM, _raise_term)
    try:
        with _HeldSignals() as held:
            _signalled(signal.SIGINT)  # noted, not raised
            with pytest.raises(KeyboardInterrupt):
                held.act()
            held.act()  # acted on once
            _signalled(signal.SIGTERM)
            with pytest.raises(_Term):  # the load test's own SIGTERM handler, called
                held.act()
            _signalled(signal.SIGINT)
            with pytest.raises(_Term):  # a second signal not yet acted on: at once
                _signalled(signal.SIGTERM)
            held.act()  # (both were)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is _raise_term
        with pytest.raises(_Term):
            _signalled(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_held_signals_leave_an_ignored_signal_ignored():
    from sweeperd.loadtest.dask_executor import _HeldSignals

    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with _HeldSignals() as held:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            _signalled(signal.SIGTERM)
            held.act()  # nothing came
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_matrix_on_two_workers_gives_the_local_runs_summary(tmp_path, loopback):
    c = loopback
    scen = _scenarios(tmp_path, {"tiny-a": (3, 5), "tiny-b": (2, 6)})
    matrix = ["--scenario", ",".join(scen), "--policy", "go,none", "--json"]
    rd, dask_s = _loadtest(*matrix, "--executor", c.url, "--out", str(tmp_path / "dask"))
    assert rd.returncode == 0, rd.stderr[-4000:] + c.logs()
    rl, local_s = _loadtest(*matrix, "--out", str(tmp_path / "local"))
    assert rl.returncode == 0, rl.stderr[-4000:]
    print(f"\nthe 2x2 matrix: 2 Dask workers {dask_s:.1f} s, local {local_s:.1f} s, "
          f"ratio {dask_s / local_s:.2f}")
    sd, sl = json.loads(rd.stdout), json.loads(rl.stdout)

    assert len(sd["runs"]) == 4 and all(r["ok"] for r in sd["runs"]), sd["runs"]
    # the same summary, whoever ran it: the same fields, at the top and in every run
    assert set(sd) == set(sl)
    assert [set(r) for r in sd["runs"]] == [set(r) for r in sl["runs"]]
    assert [r["run_id"] for r in sd["runs"]] == [r["run_id"] for r in sl["runs"]]
    assert sd["executor"] == c.url and sl["executor"] == "local"
    assert isinstance(sd["machine"], list) and sd["machine"][0]["host"]
    assert isinstance(sl["machine"], dict) and sl["machine"]["host"]
    for r in sd["runs"]:
        assert r["worker"] in ("w1", "w2") and r["host"] and r["attempts"] == 1
        assert r["max_books_vs_kernel_error"] <= 0.01, r
        assert (tmp_path / "dask" / "runs" / r["run_id"] / "daemon.log").stat().st_size > 0
    for r in sl["runs"]:
        assert r["worker"] == "local" and r["max_books_vs_kernel_error"] <= 0.01
    # one run per host at a time: no two runs of a worker overlap
    for w in ("w1", "w2"):
        spans = sorted((_when(r["started_at"]), _when(r["ended_at"]))
                       for r in sd["runs"] if r["worker"] == w)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"{w} ran two runs at once: {spans}"
    assert (tmp_path / "dask" / "report.html").stat().st_size > 0
    # progress names each run's host and worker as it starts, and warns that both share one
    assert re.search(r"\[run \d of 4\] tiny-\w x \w+: started on \S+/w[12] ", rd.stderr), rd.stderr
    assert "workers w1, w2 share the host 127.0.0.1" in rd.stderr


def test_ctrl_c_stops_the_remote_runs_and_writes_the_report_of_those_done(tmp_path, loopback):
    c = loopback
    scen = _scenarios(tmp_path, {"long": (5, 120)})
    lt, found = _loadtest_under_way(c, scen[0], "go,none,eager", tmp_path / "out")
    try:
        lt.send_signal(signal.SIGINT)
        _, err = lt.communicate(timeout=120)
    finally:
        _ended(lt)
    assert lt.returncode == 130, err[-3000:]
    assert "interrupted" in err
    # the running tasks were told: their daemons stop, no worker keeps one
    _, alive = psutil.wait_procs([found[1]], timeout=120)
    assert not alive, "the interrupted run's daemon still runs"
    end = time.monotonic() + 120
    while _run_program(c) is not None:  # (a queued task that started before the cancel)
        assert time.monotonic() < end, "a worker still runs a daemon after Ctrl-C"
        time.sleep(0.5)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runs_planned"] == 3 and len(summary["runs"]) < 3
    assert "of 3 planned runs done" in (tmp_path / "out" / "report.html").read_text()


def _loadtest_under_way(c: dasklocal.Cluster, scenario: str, policies: str, out: Path,
                        *more: str) -> tuple[subprocess.Popen[str], tuple[str, psutil.Process]]:
    """A load test on the cluster, once one of its runs' daemons runs on a worker: the load
    test's process and (that worker's name, the daemon's process)."""
    lt = subprocess.Popen(
        [sys.executable, "-m", "sweeperd.cli", "loadtest", "--scenario", scenario,
         "--policy", policies, "--executor", c.url, "--out", str(out), *more],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 300
        while (found := _run_program(c)) is None:
            assert lt.poll() is None, lt.communicate()
            assert time.monotonic() < end, "no run's daemon started: " + c.logs()
            time.sleep(0.2)
    except BaseException:
        _ended(lt)
        raise
    return lt, found


def _ended(lt: subprocess.Popen[str]) -> None:
    if lt.poll() is None:
        lt.kill()
        lt.wait()


def _run_program(c: dasklocal.Cluster) -> tuple[str, psutil.Process] | None:
    """A worker with a daemon of a run under it (its name, the daemon's process)."""
    for name in c.workers:
        for p in c.descendants(name):
            try:
                if "sweeperd.cli" in p.cmdline() and "run" in p.cmdline():
                    return name, p
            except psutil.NoSuchProcess:
                continue
    return None


def test_a_worker_killed_mid_run_has_its_run_retried_on_the_other(tmp_path, monkeypatch):
    """Dask's own rule: a task whose worker dies is run again elsewhere (up to
    distributed.scheduler.allowed-failures, 3); the dead worker's daemon stops by itself
    (run.exit_with_parent), and the row says attempts 2 and names the worker that finished."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # what a killed worker cannot remove stays here
    scen = _scenarios(tmp_path, {"kill": (2, 6)})
    with dasklocal.cluster(tmp_path / "cluster") as c:
        lt, found = _loadtest_under_way(c, scen[0], "go,none,c-glibc", tmp_path / "out",
                                        "--json")
        try:
            victim, daemon = found
            cfg = next(a for a in daemon.cmdline() if a.endswith("config.toml"))
            killed_run = Path(cfg).parent.name
            c.kill_worker(victim)
            # its daemon stops by itself: no second run beside the next on that host
            _, alive = psutil.wait_procs([daemon], timeout=120)
            assert not alive, f"the killed worker's daemon still runs: {alive}"
            out, err = lt.communicate(timeout=600)
        finally:
            _ended(lt)
    assert lt.returncode == 0, err[-4000:]
    s = json.loads(out)
    assert len(s["runs"]) == 3 and all(r["ok"] for r in s["runs"]), s["runs"]
    row = next(r for r in s["runs"] if r["run_id"] == killed_run)
    survivor = next(w for w in ("w1", "w2") if w != victim)
    assert row["attempts"] == 2 and row["worker"] == survivor, row
    assert "(attempt 2)" in err
    assert sum(r["attempts"] for r in s["runs"]) == 4
    assert next(r for r in s["runs"] if r["policy"] == "c-glibc")["worker"] in ("w1", "w2")
    assert (tmp_path / "out" / "report.html").stat().st_size > 0


def _off_loopback_address() -> str | None:
    """This host's address on its default route (no packet is sent), None without one."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ip = str(s.getsockname()[0])
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_a_scheduler_off_loopback_is_reached_over_tls_only(tmp_path):
    """A scheduler on this host's network address speaks TLS (mutual: certificates from one
    CA); the load test refuses to start without Dask's TLS settings, and with them runs."""
    import shutil

    ip = _off_loopback_address()
    if ip is None or shutil.which("openssl") is None:
        pytest.skip("no network address besides loopback, or no openssl, on this host")
    certs = dasklocal.make_certs(tmp_path / "certs", ip)
    scen = _scenarios(tmp_path, {"tls": (2, 3)})
    with dasklocal.cluster(tmp_path / "cluster", workers=1, host=ip, certs=certs) as c:
        assert c.address.startswith(f"tls://{ip}:")
        args = ["--scenario", scen[0], "--policy", "none", "--executor", c.url, "--json"]
        bare = subprocess.run([sys.executable, "-m", "sweeperd.cli", "loadtest", *args,
                               "--out", str(tmp_path / "refused")],
                              capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items()
                                   if not k.startswith("DASK_")})
        assert bare.returncode == 2, bare.stderr
        assert "TLS" in bare.stderr and "distributed.comm.tls.ca-file" in bare.stderr
        assert not (tmp_path / "refused").exists()
        r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "loadtest", *args,
                            "--out", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, **dasklocal.client_tls_env(certs)})
        assert r.returncode == 0, r.stderr[-4000:] + c.logs()
        s = json.loads(r.stdout)
        assert [x["ok"] for x in s["runs"]] == [True] and s["runs"][0]["worker"] == "w1"


def test_a_lost_scheduler_ends_the_load_test_with_the_report_of_the_runs_done(tmp_path):
    """Dask cancels every future when its client loses the scheduler: said once, the report
    of the runs done written (the runs not done are planned, not failed), exit 1; and the
    run in flight stops with its worker (which gives up without a scheduler)."""
    scen = _scenarios(tmp_path, {"lost": (3, 60)})
    with dasklocal.cluster(tmp_path / "cluster", workers=1) as c:
        lt, found = _loadtest_under_way(c, scen[0], "go,none", tmp_path / "out")
        try:
            os.killpg(c.scheduler.pid, signal.SIGKILL)
            _, err = lt.communicate(timeout=300)
        finally:
            _ended(lt)
        assert lt.returncode == 1, err[-3000:]
        assert err.count("lost the connection to the Dask scheduler") == 1, err[-3000:]
        assert "2 of 2 runs not done" in err
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["runs"] == [] and summary["runs_planned"] == 2
        _, alive = psutil.wait_procs([found[1]], timeout=240)
        assert not alive, "the run's daemon outlived its worker"
