"""A real daemon whose coordinator cannot carry out one of the cycle machine's actions (an
``action.<Kind>`` fail point raises in its place): the machine goes BROKEN, the daemon drains
its workers and exits 5 (``ExitCode.CYCLE_BROKEN``) with one line naming the phase, the action
and the cause.  And an unexpected exception in the shell's own loop exits 8 (INTERNAL), not 1.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from sweeperd.errors import ExitCode
from sweeperd.wire import protocol

from .daemon import Daemon, ask, proc_gone

DEADLINE_S = 120

# action kind -> (what the test does so that the daemon carries it out, the phases it may be
# carried out in: the machine has already moved when it returns an action)
KINDS = {
    "MeasureHeap": (None, {"idle"}),
    "SendResume": (None, {"idle", "sweep"}),  # a mutator's hello; resumes after each mark
    "SendMark": ("gc", {"mark"}),
    "MeasureLive": ("gc", {"mark"}),
    "BeginSweep": ("gc", {"sweep"}),
    "SendSweep": ("gc", {"sweep"}),
    "MeasureSweep": ("gc", {"sweep"}),
    "EndCycle": ("gc", {"idle"}),
    "Kill": ("stop", {"idle", "mark", "sweep"}),  # a sweeper stopped: silent, killed
    "Recover": ("kill", {"idle", "mark", "sweep"}),  # a sweeper killed: recovered ...
    "Restart": ("kill", {"idle", "mark", "sweep"}),  # ... and restarted
}
# SweepMissed (spans the shards missed, swept by the coordinator) arises only after rare
# deaths; its BROKEN edge is the same ActionFailed event, tested pure in test_cycle.py.


def _try(d: Daemon, request: str, timeout_ms: int = 2000) -> dict | None:
    """One request, or None when the daemon does not answer (it may be exiting)."""
    return ask(d.zctx, d.control, request, timeout_ms / 1000)


def _daemon(tmp_path, points: str) -> Daemon:
    cfg = tmp_path / "broken.toml"
    # (dead_after_ms as shipped: a worker's start under load is not taken for silence)
    cfg.write_text("[control]\nheartbeat_ms = 100\ndead_after_ms = 5000\n")
    return Daemon("--config", str(cfg), "--heap-mib", "32", "--sweepers", "1",
                  "--mutators", "1",
                  env={"SWEEPERD_FAILPOINTS": points, "SWEEPERD_FAILPOINTS_DIR": str(tmp_path)})


def _provoke(d: Daemon, how: str | None, pids: set[int]) -> None:
    """Until the daemon exits: make it carry out the action (every 0.2 s, a ``gc`` or a
    signal to a sweeper), noting the workers' pids as they come."""
    deadline = time.monotonic() + DEADLINE_S
    hit: set[int] = set()
    while d.proc.poll() is None and time.monotonic() < deadline:
        st = _try(d, "gc" if how == "gc" else "status")
        if st is not None and how in ("stop", "kill"):
            st = _try(d, "status")
        for w in (st or {}).get("workers", []):
            pids.add(w["pid"])
            if (how in ("stop", "kill") and w["role"] == "sweeper" and w["state"] == "alive"
                    and w["pid"] not in hit):
                os.kill(w["pid"], signal.SIGSTOP if how == "stop" else signal.SIGKILL)
                hit.add(w["pid"])
        time.sleep(0.2)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_failed_action_breaks_the_cycle_and_the_daemon_exits_5_naming_it(tmp_path, kind):
    how, phases = KINDS[kind]
    d = _daemon(tmp_path, f"action.{kind}")
    pids: set[int] = set()
    try:
        _provoke(d, how, pids)
        if d.proc.poll() is None:
            raise AssertionError(f"still running after {DEADLINE_S}s:\n{d.where()}")
        code = d.proc.wait(60)
        err = d.proc.stderr.read()
    finally:
        d.close()
    assert (tmp_path / f"action.{kind}").exists()  # the fail point fired
    assert code == ExitCode.CYCLE_BROKEN, err[-3000:]
    line = [ln for ln in err.splitlines() if ln.startswith("sweeperd run: ")]
    assert len(line) == 1, err[-3000:]
    prefix = f"sweeperd run: cycle machine BROKEN: action {kind} failed in phase "
    assert line[0].startswith(prefix), line
    phase, _, cause = line[0][len(prefix):].partition(": ")
    assert phase in phases, line
    assert cause == f"InjectedFailure: fail point action.{kind}", line
    assert all(proc_gone(p) for p in pids)  # drained: no worker outlives the daemon


def test_an_unexpected_exception_in_the_shell_exits_8_after_draining(tmp_path):
    d = _daemon(tmp_path, "shell.step")
    pids: set[int] = set()
    try:
        _provoke(d, None, pids)
        code = d.proc.wait(60)
        err = d.proc.stderr.read()
    finally:
        d.close()
    assert code == ExitCode.INTERNAL, err[-3000:]
    assert "sweeperd run: internal error: InjectedFailure: fail point shell.step" in err
    assert "Traceback" in err  # the cause, for the bug report
    assert all(proc_gone(p) for p in pids)


# --- failures that must not end the daemon ----------------------------------------------------


def _lines(stream) -> list[str]:
    import threading

    got: list[str] = []
    threading.Thread(target=lambda: got.extend(iter(stream.readline, "")), daemon=True).start()
    return got


def test_a_trace_stream_gone_stops_tracing_not_the_daemon(tmp_path):
    """``sweeperd run --gctrace 2>&1 | head -1``: the reader of stderr goes away (EPIPE)."""
    d = Daemon("--heap-mib", "32", "--sweepers", "1", "--mutators", "1", "--gctrace",
               "--scavtrace")
    try:
        out = _lines(d.proc.stdout)
        d.proc.stderr.close()  # the reading end: every write to the daemon's stderr is EPIPE
        start = d.status()["cycle"]
        deadline = time.monotonic() + DEADLINE_S
        while d.status()["cycle"] < start + 3:  # cycles go on, each would write a trace line
            assert time.monotonic() < deadline, "no cycles after the trace stream went"
            d.request(protocol.encode("gc"))
            time.sleep(0.2)
        assert any("the trace stream failed (BrokenPipeError" in ln for ln in out), out[-20:]
        assert sum("trace stream failed" in ln for ln in out) == 1  # said once, then quiet
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(60) == ExitCode.OK
    finally:
        d.close()


def test_a_service_manager_gone_is_not_a_reason_to_die(tmp_path):
    """NOTIFY_SOCKET names a socket nobody listens on (the manager restarted, or a stale
    environment): READY, WATCHDOG and STOPPING all fail; the daemon says so once and runs."""
    d = Daemon("--heap-mib", "32", "--sweepers", "1", "--mutators", "1",
               env={"NOTIFY_SOCKET": str(tmp_path / "gone" / "notify"),
                    "WATCHDOG_USEC": "200000"})
    try:
        start = d.status()["cycle"]
        deadline = time.monotonic() + DEADLINE_S
        while d.status()["cycle"] < start + 2:
            assert time.monotonic() < deadline, "no cycles without the service manager"
            d.request(protocol.encode("gc"))
            time.sleep(0.3)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(60) == ExitCode.OK
        err = d.proc.stderr.read()
        assert err.count("sd_notify to") == 1 and "No such file or directory" in err, err
    finally:
        d.close()
