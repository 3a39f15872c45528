"""A worker stopped (SIGSTOP) while it holds the heap lock must not wedge the daemon: the
coordinator never waits blindly for the lock (it answers ``status`` between tries), kills the
holder once it has been silent for ``control.dead_after_ms``, and the kernel drops the lock of
the dead.  A real daemon, 20 stops in a row, a client asking ``status`` all along; another asks
``scavenge`` (no scavenger: the coordinator releases pages itself, under the lock) so that the
coordinator needs the lock while it is held."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import threading
import time

from .daemon import Daemon, ask, proc_gone

DEAD_AFTER_MS = 2000
ROUNDS = 20
SLACK_S = 1.0  # the bound: no status unanswered for longer than dead_after + 1 s


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait(pred, what: str, timeout_s: float = 60) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_mutator_stopped_holding_the_heap_lock_never_wedges_the_daemon(tmp_path):
    fp = tmp_path / "fp"
    fp.mkdir()
    cfg = tmp_path / "wedge.toml"
    cfg.write_text(f"[control]\nheartbeat_ms = 100\ndead_after_ms = {DEAD_AFTER_MS}\n"
                   "max_deaths = 100000\nrestart_backoff_max_ms = 200\n"
                   "[mutators]\nlarge_fraction = 0.05\n[scavenger]\nenabled = false\n")
    d = Daemon("--config", str(cfg), "--heap-mib", "64", "--sweepers", "1", "--mutators", "2",
               env={"SWEEPERD_FAILPOINTS": "mutator.locked", "SWEEPERD_FAILPOINTS_DIR": str(fp)})
    done = threading.Event()
    answered: list[float] = []
    unanswered: list[str] = []
    cycles: list[int] = []
    mutators_alive: list[int] = [0]

    def ask_status() -> None:
        while not done.is_set():
            st = ask(d.zctx, d.control, "status")
            if st is None:
                unanswered.append("status")
                return
            answered.append(time.monotonic())
            cycles.append(st.get("cycle", -1))
            mutators_alive[0] = sum(1 for w in st.get("workers", [])
                                    if w["role"] == "mutator" and w["state"] == "alive")
            time.sleep(0.01)

    def need_the_lock() -> None:  # FreeOSMemory by the coordinator itself, under the lock
        while not done.wait(0.3):
            if ask(d.zctx, d.control, "scavenge") is None:
                unanswered.append("scavenge")
                return

    threads = [threading.Thread(target=f, daemon=True) for f in (ask_status, need_the_lock)]
    stopped: list[int] = []
    try:
        for t in threads:
            t.start()
        marker = fp / "mutator.locked"
        for r in range(ROUNDS):
            _wait(lambda: marker.exists() and marker.read_text().isdigit(),
                  "a mutator to stop holding the heap lock", 120)
            pid = int(marker.read_text())
            stopped.append(pid)
            _wait(lambda p=pid: proc_gone(p), f"the stopped mutator {pid} to be killed", 120)
            _wait(lambda: mutators_alive[0] == 2, "both mutators up again", 120)
            if r < ROUNDS - 1:  # armed again: the next mutator through the point stops
                marker.unlink()  # (not after the last: the drain is asserted on its own)
            assert not unanswered, unanswered
        done.set()
        for t in threads:
            t.join(90)
        d.proc.send_signal(signal.SIGTERM)  # drained on SIGTERM
        code = d.proc.wait(60)
        out = "".join(d.lines) + (d.proc.stdout.read() if d.proc.stdout else "")
        err = d.proc.stderr.read() if d.proc.stderr else ""
    finally:
        done.set()
        d.close()
    assert not unanswered, unanswered
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    longest = max(gaps)
    killed_by_waiter = len(re.findall(r"holds the heap lock .* killing it", out))
    killed_silent = len(re.findall(r"silent for [\d.]+s: killing it", out))
    print(f"\n{ROUNDS} stops; {len(answered)} status answers; longest gap {longest:.3f}s "
          f"(bound {DEAD_AFTER_MS / 1000 + SLACK_S:.1f}s); killed by the lock wait "
          f"{killed_by_waiter}, by the cycle machine {killed_silent}; cycles {cycles[-1]}")
    assert len(set(stopped)) == ROUNDS
    assert longest <= DEAD_AFTER_MS / 1000 + SLACK_S, f"status unanswered for {longest:.3f}s"
    assert killed_by_waiter + killed_silent >= ROUNDS
    assert code == 0, err[-3000:]
    assert all(proc_gone(p) for p in stopped)


# --- the lock itself, and a holder that is not ours -----------------------------------------

HOLD = """
import json, os, signal, sys
from sweeperd.runtime.heap import Heap, HeapHandle
heap = Heap.attach(HeapHandle.from_dict(json.loads(sys.argv[1])))
heap.lock.__enter__()
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_a_timed_acquire_names_a_stopped_holder_and_a_waiter_can_end_its_hold():
    import subprocess
    import sys

    from sweeperd.runtime.heap import H_LOCK_HOLDER, Heap
    from sweeperd.sys.shm import LockTimeout

    heap = Heap.create(1 << 20)
    p = subprocess.Popen([sys.executable, "-c", HOLD, json.dumps(heap.handle.to_dict())],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "held\n"
        _wait(lambda: _state(p.pid) == "T", "the holder to stop")
        assert heap.lock.holder_pid() == p.pid == int(heap.header[H_LOCK_HOLDER])
        assert heap.lock.acquire(timeout_s=0.2) is False  # stopped: never let go
        try:
            with heap.lock.within(0.2):
                raise AssertionError("taken while a stopped process holds it")
        except LockTimeout as e:
            assert f"held by pid {p.pid}" in str(e)
        assert not heap.lock.held
        seen: list[int] = []

        def waiter(holder: int, began: float) -> None:  # as the coordinator does: kill
            seen.append(holder)
            if len(seen) == 1:
                os.kill(holder, signal.SIGKILL)

        heap.lock.waiter = waiter
        with heap.lock:  # the kernel drops a dead holder's lock
            assert heap.lock.holder_pid() == os.getpid()
        assert heap.lock.holder_pid() == 0 and seen and set(seen) == {p.pid}
        assert p.wait(60) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        heap.lock.waiter = None
        heap.close()


def test_a_holder_not_ours_is_waited_on_answering_status_and_sigterm_ends_the_wait_named(
        tmp_path):
    """A process that is no worker of the daemon (never killed by it) holds the heap lock: a
    ``scavenge`` request answers ``busy`` within its 0.5 s; the recovery of a killed sweeper
    waits, answering ``status``; SIGTERM then ends the wait after 2 x dead_after: the action
    is abandoned, the machine BROKEN, exit 5 naming the holder."""
    from sweeperd.errors import ExitCode
    from sweeperd.runtime.heap import Heap, HeapHandle

    cfg = tmp_path / "foreign.toml"
    cfg.write_text("[control]\nheartbeat_ms = 100\ndead_after_ms = 1000\n"
                   "[scavenger]\nenabled = false\n")
    d = Daemon("--config", str(cfg), "--heap-mib", "32", "--sweepers", "1", "--mutators", "1")
    heap = None
    try:
        st = d.wait_for(lambda s: s["workers_alive"] == 2, what="both workers up")
        heap = Heap.attach(HeapHandle.from_dict(st["heap_handle"]))
        heap.lock.__enter__()
        busy = ask(d.zctx, d.control, "scavenge")
        assert busy is not None and busy["ok"] is False and busy["reason"] == "busy", busy
        assert f"held by pid {os.getpid()}" in busy["error"]
        sweeper = next(w["pid"] for w in st["workers"] if w["role"] == "sweeper")
        os.kill(sweeper, signal.SIGKILL)  # its recovery needs the lock
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:  # the coordinator waits, and answers
            st = ask(d.zctx, d.control, "status", timeout_s=3)
            assert st is not None and st["ok"], st
            time.sleep(0.1)
        assert d.proc.poll() is None
        d.proc.send_signal(signal.SIGTERM)
        code = d.proc.wait(60)
        err = d.proc.stderr.read()
    finally:
        if heap is not None:
            heap.lock.__exit__()
            heap.close()
        d.close()
    assert code == ExitCode.CYCLE_BROKEN, err[-3000:]
    assert ("sweeperd run: cycle machine BROKEN: action Recover failed in phase " in err
            and f"HeapLockAbandoned: stopping, and the heap lock is still held by pid "
                f"{os.getpid()}" in err), err[-3000:]
