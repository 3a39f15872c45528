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
