"""Fail points: armed only through the environment, each fires once per directory, and a
misspelt name refuses to load rather than silently never firing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

CODE = "from sweeperd.sys import failpoint; failpoint.hit('scavenge.taken'); print('alive')"


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPERD_FAILPOINTS")}
    return subprocess.run([sys.executable, "-c", CODE], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_unarmed_points_do_nothing(tmp_path):
    assert _run({}).stdout == "alive\n"
    # named but without a directory: not armed (a point fires once per directory)
    assert _run({"SWEEPERD_FAILPOINTS": "scavenge.taken"}).stdout == "alive\n"


def test_an_armed_point_kills_once_per_directory(tmp_path):
    env = {"SWEEPERD_FAILPOINTS": "scavenge.taken", "SWEEPERD_FAILPOINTS_DIR": str(tmp_path)}
    first = _run(env)
    assert first.returncode == -signal.SIGKILL and first.stdout == ""
    assert (tmp_path / "scavenge.taken").exists()
    assert _run(env).stdout == "alive\n"  # the replacement goes on


def test_an_unknown_point_is_refused_by_name(tmp_path):
    r = _run({"SWEEPERD_FAILPOINTS": "scavenge.takne", "SWEEPERD_FAILPOINTS_DIR": str(tmp_path)})
    assert r.returncode == 1 and "scavenge.takne" in r.stderr and "unknown" in r.stderr


FAIL = ("from sweeperd.sys import failpoint\n"
        "try:\n    failpoint.fail('action.BeginSweep')\n"
        "except failpoint.InjectedFailure as e:\n    print('raised:', e)\n"
        "print('alive')")


def test_a_fail_point_raises_once_per_directory(tmp_path):
    env = {"SWEEPERD_FAILPOINTS": "action.BeginSweep", "SWEEPERD_FAILPOINTS_DIR": str(tmp_path)}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPERD_FAILPOINTS")}
    run = [sys.executable, "-c", FAIL]
    first = subprocess.run(run, env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert first.stdout == "raised: fail point action.BeginSweep\nalive\n", first.stderr
    assert (tmp_path / "action.BeginSweep").read_text().isdigit()
    again = subprocess.run(run, env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert again.stdout == "alive\n"
    unarmed = subprocess.run(run, env=clean, capture_output=True, text=True, timeout=60)
    assert unarmed.stdout == "alive\n"


def test_a_stop_point_stops_the_process_and_names_it(tmp_path):
    import time

    env = {"SWEEPERD_FAILPOINTS": "mutator.locked", "SWEEPERD_FAILPOINTS_DIR": str(tmp_path)}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPERD_FAILPOINTS")}
    code = "from sweeperd.sys import failpoint; failpoint.stop('mutator.locked'); print('alive')"
    p = subprocess.Popen([sys.executable, "-c", code], env={**clean, **env},
                         stdout=subprocess.PIPE, text=True)
    try:
        marker = tmp_path / "mutator.locked"
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text().isdigit()):
            assert time.monotonic() < deadline, "the point did not fire"
            time.sleep(0.02)
        assert int(marker.read_text()) == p.pid

        def state() -> str:
            with open(f"/proc/{p.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]

        while state() != "T":
            assert time.monotonic() < deadline, "the process did not stop"
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGCONT)
        assert p.stdout.read() == "alive\n" and p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()


def test_a_point_armed_n_times_kills_n_processes_then_lets_the_next_go_on(tmp_path):
    env = {"SWEEPERD_FAILPOINTS": "scavenge.taken:3", "SWEEPERD_FAILPOINTS_DIR": str(tmp_path)}
    for _ in range(3):
        assert _run(env).returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scavenge.taken", "scavenge.taken.2", "scavenge.taken.3"]
    assert _run(env).stdout == "alive\n"


def test_a_bad_count_is_refused(tmp_path):
    for bad in ("scavenge.taken:0", "scavenge.taken:x", "scavenge.taken:", "scavenge.taken:-1",
                "scavenge.taken:1001"):
        r = _run({"SWEEPERD_FAILPOINTS": bad, "SWEEPERD_FAILPOINTS_DIR": str(tmp_path)})
        assert r.returncode == 1 and "count" in r.stderr, bad
