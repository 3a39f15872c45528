"""``run.exit_with_parent``: a daemon whose starter is killed stops, says why, and takes its
workers with it (the load test's daemons under a killed harness or Dask worker)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STARTER = r"""
import subprocess, sys, time
log = open(sys.argv[2], "w")
p = subprocess.Popen([sys.executable, "-m", "sweeperd.cli", "run", "--config", sys.argv[1]],
                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
print(p.pid, flush=True)
time.sleep(3600)
"""


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pids: list[int], deadline_s: float) -> list[int]:
    end = time.monotonic() + deadline_s
    while (left := [p for p in pids if not _gone(p)]) and time.monotonic() < end:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("exit_with_parent", [True, False])
def test_a_daemon_stops_when_its_starter_is_killed_only_if_asked(tmp_path: Path,
                                                                 exit_with_parent: bool):
    ctl = tmp_path / "c.sock"
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[heap]\nsize_mib = 64\n[control]\naddr = "ipc://{ctl}"\n'
                   f'[metrics]\naddr = "127.0.0.1:0"\n'
                   f"[run]\nexit_with_parent = {str(exit_with_parent).lower()}\n")
    log = tmp_path / "daemon.log"
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(cfg), str(log)],
                               stdout=subprocess.PIPE, text=True)
    daemon_pid = 0
    try:
        assert starter.stdout is not None
        daemon_pid = int(starter.stdout.readline())
        end = time.monotonic() + 120
        while "control on" not in log.read_text() and time.monotonic() < end:
            assert not _gone(daemon_pid), f"the daemon died at start: {log.read_text()}"
            time.sleep(0.1)
        assert "control on" in log.read_text(), log.read_text()
        # (the workers are started after the addresses are printed)
        children = Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children")
        while not (kids := [int(p) for p in children.read_text().split()]):
            assert time.monotonic() < end, f"the daemon has started no worker: {log.read_text()}"
            time.sleep(0.1)
        starter.kill()
        starter.wait()
        if exit_with_parent:
            left = _wait_gone([daemon_pid, *kids], 120)
            assert not left, f"still running 120 s after the starter died: {left}"
            text = log.read_text()
            assert re.search(rf"stopping: its parent \(pid {starter.pid}\) went away", text), text
            assert "stopping after" in text  # drained as on SIGTERM
        else:  # the default keeps serving (as under systemd, its parent pid 1 for good)
            time.sleep(2)
            assert not _gone(daemon_pid), log.read_text()
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        if daemon_pid and not _gone(daemon_pid):
            os.kill(daemon_pid, signal.SIGTERM)
            if _wait_gone([daemon_pid], 60):
                os.killpg(daemon_pid, signal.SIGKILL)
