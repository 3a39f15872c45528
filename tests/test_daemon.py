"""End to end: a real daemon with 2 sweepers and 2 mutators, over many cycles."""

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from sweeperd.wire import protocol

from .daemon import Daemon

REQUIRED_METRICS = [
    "sweeperd_gc_cycles_total", 'sweeperd_sweep_spans_total{by="background"}',
    'sweeperd_sweep_spans_total{by="mutator"}', "sweeperd_sweep_pages_total",
    "sweeperd_sweep_objects_freed_total", "sweeperd_heap_objects_bytes",
    "sweeperd_heap_free_bytes", "sweeperd_heap_goal_bytes", "sweeperd_sweep_phase_seconds_bucket",
    'sweeperd_workers{role="sweeper",state="alive"}',
]


def _alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):  # (it may be reaped at any of these)
        return False


def _nice(pid: int) -> int:
    """The nice value of ``pid``, as the kernel reports it (/proc/PID/stat field 19)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def test_cycles_exactly_once_no_object_lost_and_clean_shutdown(daemon):
    st = daemon.wait_for(lambda s: s["cycle"] >= 8, what="8 GC cycles")
    dbg, mut = st["debug"], st["mutators"]
    assert dbg["enabled"] and dbg["cycles_checked"] >= 8 and dbg["spans_checked"] > 0
    assert dbg["exactly_once_violations"] == 0
    # allocated = live + freed, counted exactly at the last mark
    assert dbg["conservation_checks"] >= 8 and dbg["conservation_gap"] == 0
    assert dbg["counter_gap_bytes"] == 0  # the O(1) trigger's counters match a full scan
    assert dbg["marked_gap_bytes"] == 0  # the mutators' marked bytes match the mark bits
    assert mut["objects_checked"] > 0 and mut["lost_objects"] == 0
    assert mut["payload_errors"] == 0
    assert st["spans_swept"]["background"] > 0 and st["objects_freed"] > 0
    assert st["workers_alive"] == 5
    # conservation, as the heap sees it: objects bytes never exceed spans in use
    h = st["heap"]
    assert 0 < h["objects_bytes"] <= h["in_use_bytes"] <= h["heap_bytes"]
    body = urllib.request.urlopen(daemon.metrics, timeout=10).read().decode()
    for name in REQUIRED_METRICS:
        assert name in body, name
    # the engine it runs, said in status and the scrape (where a compiler is, the compiled)
    from sweeperd.runtime import kernels

    want = "compiled" if kernels.enabled() else "numpy"
    assert st["sweep_engine"].startswith(want), st["sweep_engine"]
    assert f'sweeperd_sweep_engine_info{{engine="{want}"}} 1.0' in body.splitlines()
    pids = [w["pid"] for w in st["workers"]]
    # workers run at control.worker_nice (5) below the daemon, which keeps its own priority
    assert {_nice(p) - _nice(st["pid"]) for p in pids} == {5}
    ipc_dir = st["ipc_dir"]
    assert daemon.stop() == 0
    assert not any(_alive(p) for p in pids), "a worker outlived the daemon"
    assert not os.path.exists(ipc_dir)


@pytest.fixture(scope="module")
def refusing():
    """One daemon (the ``daemon`` fixture's) that every malformed message below is sent to,
    in turn: each case counts its own refusal (+1 on its reason) and sees the cycles go on;
    the last test stops it.  (A daemon per case started seven identical daemons.)"""
    d = Daemon("--heap-mib", "64", "--sweepers", "2", "--mutators", "2", "--debug-checks")
    try:
        yield d
    finally:
        d.close()


@pytest.mark.parametrize("frames,reason", [
    ([b"\x00\xffgarbage"], "not_json"),
    ([b'{"v":1,"type":"status","extra":[1]}'], "bad_field"),
    ([b'{"v":1,"type":7}'], "unknown_type"),
    ([b'{"v":99,"type":"status"}'], "bad_version"),
    ([b'{"v":1,"type":"stop"}'], "unknown_type"),  # workers' messages are not for clients
    ([b"x" * (protocol.MAX_FRAME + 10)], "oversized"),
    ([b'{"v":1,"type":"status"}', b"second"], "multipart"),
])
def test_malformed_control_messages_are_refused_and_counted(refusing, frames, reason):
    before = refusing.status()
    r = refusing.request(frames)
    assert r["ok"] is False and r["reason"] == reason and r["error"]
    after = refusing.wait_for(lambda s: s["cycle"] > before["cycle"], what="another cycle")
    assert after["control_errors"].get(reason, 0) == before["control_errors"].get(reason, 0) + 1
    assert after["workers_alive"] == 5 and after["debug"]["exactly_once_violations"] == 0


def test_the_daemon_that_refused_them_stops_clean(refusing):
    st = refusing.status()
    assert st["workers_alive"] == 5 and st["debug"]["exactly_once_violations"] == 0
    assert refusing.stop() == 0


def test_kill_9_workers_are_replaced_and_cycles_stay_exact(daemon):
    import signal

    st = daemon.wait_for(lambda s: s["cycle"] >= 3, what="3 cycles")
    for victim_role in ("sweeper", "mutator", "sweeper"):
        victim = next(w for w in st["workers"] if w["role"] == victim_role)
        os.kill(victim["pid"], signal.SIGKILL)
        st = daemon.wait_for(
            lambda s, v=victim: s["workers_alive"] == 5
            and all(w["pid"] != v["pid"] for w in s["workers"])
            and all(w["state"] == "alive" for w in s["workers"]),
            what=f"a replacement for {victim_role} {victim['pid']}")
        c = st["cycle"]
        st = daemon.wait_for(lambda s, c=c: s["cycle"] >= c + 3, what="3 more cycles")
    assert st["deaths"] == {"sweeper": 2, "mutator": 1, "scavenger": 0}
    assert st["debug"]["exactly_once_violations"] == 0
    assert st["mutators"]["lost_objects"] == 0 and st["mutators"]["payload_errors"] == 0
    assert daemon.stop() == 0


def test_duration_ends_the_run_by_itself():
    d = Daemon("--heap-mib", "32", "--sweepers", "1", "--mutators", "1", "--duration", "3")
    try:
        assert d.proc.wait(60) == 0
        out = d.proc.stdout.read()
        assert "stopping after" in out
    finally:
        d.close()


@pytest.mark.parametrize("flag,key", [("--metrics-addr", "metrics.addr"),
                                      ("--control", "control.addr")])
def test_a_taken_port_names_the_address_and_key_and_leaves_nothing(flag, key, tmp_path):
    import glob
    import socket
    import subprocess
    import sys

    from sweeperd.daemon.control import write_pair

    # tcp control is served only with CURVE: a server key and one allowed client
    server = write_pair(str(tmp_path), "server")[1]
    client = write_pair(str(tmp_path), "client")[0]
    cfg = tmp_path / "curve.toml"
    cfg.write_text(f'[control]\ncurve_server_key = "{server}"\n'
                   f'curve_allowed_clients = "{client}"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        taken = f"127.0.0.1:{port}" if flag == "--metrics-addr" else f"tcp://127.0.0.1:{port}"
        other = (["--control", f"ipc://{tmp_path}/c.sock"] if flag == "--metrics-addr"
                 else ["--metrics-addr", "127.0.0.1:0"])
        before = set(glob.glob("/tmp/sweeperd-*"))
        r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "run", "--heap-mib", "16",
                            "--config", str(cfg), flag, taken, *other],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert key in r.stderr and str(port) in r.stderr and "in use" in r.stderr, r.stderr
    assert set(glob.glob("/tmp/sweeperd-*")) - before == set()  # no temp dir left behind


def test_a_broken_heap_invariant_stops_the_daemon_loudly_after_draining():
    """Zero every span's allocCount under the live daemon, once a cycle until it notices: the
    next sweep finds more marked objects than allocated ("sweep increased allocation count"),
    or a mutator marking a span it filled finds its count wrong.  Whichever process finds it,
    that is a throw, not a death to recover from: the daemon drains its workers, frees its
    memory, names the throw and exits 3.  (Once a cycle: a mutator refilling a span whose
    count reads 0 would take it for fresh and write the count again, and objects that all
    die before the next mark leave nothing for a sweep to find.)"""
    from sweeperd.runtime.heap import H_SWEEPGEN, Heap, HeapHandle

    d = Daemon("--heap-mib", "32", "--sweepers", "1", "--mutators", "2")
    try:
        st = d.wait_for(lambda s: s["cycle"] >= 2, what="2 cycles")
        pids = [w["pid"] for w in st["workers"]]
        deadline = time.monotonic() + 180
        with Heap.attach(HeapHandle.from_dict(st["heap_handle"])) as heap:
            corrupted_at = -1
            while d.proc.poll() is None and time.monotonic() < deadline:
                if heap.header[H_SWEEPGEN] != corrupted_at:
                    with heap.lock:
                        corrupted_at = int(heap.header[H_SWEEPGEN])
                        heap.span_alloc_count[heap.in_use_spans()] = 0
                with contextlib.suppress(subprocess.TimeoutExpired):
                    d.proc.wait(0.2)
        assert d.proc.wait(60) == 3
        err = d.proc.stderr.read()
        assert "fatal" in err and "allocCount" in err, err[-2000:]
        assert ("sweep increased allocation count" in err
                or "mark_whole_spans: span" in err), err[-2000:]
        assert not any(_alive(p) for p in pids), "a worker outlived the daemon"
        assert not os.path.exists(st["ipc_dir"])
    finally:
        d.close()


def test_every_object_finalizable_the_daemon_keeps_cycling(tmp_path):
    """finalizer_fraction = 1: far more finalizers per cycle than the shared ring holds; the
    sweepers run the oldest to make room (backpressure) and nothing dies."""
    cfg = tmp_path / "fin.toml"
    cfg.write_text("[mutators]\nfinalizer_fraction = 1.0\n")
    d = Daemon("--config", str(cfg), "--heap-mib", "32", "--sweepers", "2", "--mutators", "2",
               "--debug-checks")
    try:
        st = d.wait_for(lambda s: s["cycle"] >= 6 and s["finalizers_run"] > 65536,
                        timeout=120, what="6 cycles and more finalizers than the ring holds")
        assert st["debug"]["exactly_once_violations"] == 0
        assert st["mutators"]["lost_objects"] == 0 and st["mutators"]["payload_errors"] == 0
        assert d.stop() == 0
    finally:
        d.close()


def _fast_liveness(tmp_path):
    cfg = tmp_path / "live.toml"
    cfg.write_text("[control]\nheartbeat_ms = 100\ndead_after_ms = 1000\n")
    return Daemon("--config", str(cfg), "--heap-mib", "32", "--sweepers", "2",
                  "--mutators", "2")


def test_busy_is_not_dead_workers_blocked_in_a_long_step_still_beat(tmp_path):
    """Hold the heap lock for 3x dead_after: every worker's main thread blocks in its step and
    sends nothing, but its beat thread goes on, so none is killed."""
    import time

    from sweeperd.runtime.heap import Heap, HeapHandle

    d = _fast_liveness(tmp_path)
    try:
        # every worker up (a start on a loaded host is judged by the start allowance, not by
        # dead_after: cycle.py), then the hold
        st = d.wait_for(lambda s: s["cycle"] >= 2 and s["workers_alive"] == 5
                        and all(w["state"] == "alive" for w in s["workers"]), timeout=120,
                        what="2 cycles, every worker up")
        before = dict(st["deaths"])
        with Heap.attach(HeapHandle.from_dict(st["heap_handle"])) as heap, heap.lock:
            time.sleep(3.0)
        c = d.status()["cycle"]
        st = d.wait_for(lambda s: s["cycle"] >= c + 3, timeout=120, what="3 more cycles")
        assert st["deaths"] == before, (before, st["deaths"])
        assert d.stop() == 0
    finally:
        d.close()


def test_a_stopped_worker_is_still_detected_killed_and_replaced(tmp_path):
    """A stopped worker's beat stops too: it is killed as silent and replaced.  (That the kill
    comes at the first tick past dead_after is the machine's, checked without a clock in
    test_cycle.py; a wall-clock bound here would race a loaded machine.)"""
    import signal

    d = _fast_liveness(tmp_path)
    try:
        st = d.wait_for(lambda s: s["cycle"] >= 2 and s["workers_alive"] == 5
                        and all(w["state"] == "alive" for w in s["workers"]), timeout=120,
                        what="2 cycles, every worker up")
        before = st["deaths"]["sweeper"]
        victim = next(w for w in st["workers"] if w["role"] == "sweeper")
        os.kill(victim["pid"], signal.SIGSTOP)
        st = d.wait_for(lambda s: s["deaths"]["sweeper"] > before, timeout=120,
                        what="a kill")
        st = d.wait_for(lambda s: s["workers_alive"] == 5
                        and all(w["state"] == "alive" for w in s["workers"]),
                        what="a replacement")
        assert d.stop() == 0
    finally:
        d.close()


def _status_or_none(d, timeout_ms=2000):
    import zmq as _zmq

    s = d.zctx.socket(_zmq.REQ)
    s.setsockopt(_zmq.LINGER, 0)
    try:
        s.connect(d.control)
        s.send(protocol.encode("status"))
        return json.loads(s.recv()) if s.poll(timeout_ms) else None
    finally:
        s.close()


def test_a_role_that_keeps_dying_stops_the_daemon_naming_it(tmp_path):
    """More than control.max_deaths deaths of one role within the window: the daemon drains
    and exits 4, naming the role, so that systemd's Restart= decides."""
    import signal
    import time

    cfg = tmp_path / "deaths.toml"
    cfg.write_text("[control]\nmax_deaths = 3\ndeath_window_s = 120\n"
                   "restart_backoff_max_ms = 200\n")
    d = Daemon("--config", str(cfg), "--heap-mib", "32", "--sweepers", "1", "--mutators", "1")
    try:
        killed = set()
        deadline = time.monotonic() + 60
        while d.proc.poll() is None and time.monotonic() < deadline:
            st = _status_or_none(d)  # (never d.status(): on no answer it kills the daemon)
            for w in (st or {}).get("workers", []):
                if w["role"] == "mutator" and w["state"] == "alive" and w["pid"] not in killed:
                    os.kill(w["pid"], signal.SIGKILL)
                    killed.add(w["pid"])
            time.sleep(0.1)
        assert d.proc.wait(120) == 4
        err = d.proc.stderr.read()
        assert "giving up: 4 mutator deaths" in err and "control.max_deaths" in err, err[-2000:]
        assert len(killed) == 4
        assert not any(_alive(p) for p in killed)
    finally:
        d.close()


def test_a_killed_daemons_private_dir_is_removed_by_the_next_start(tmp_path):
    import signal

    from sweeperd.daemon.coordinator import remove_stale_dirs

    d = Daemon("--heap-mib", "16", "--sweepers", "1", "--mutators", "1")
    try:
        ipc_dir = d.status()["ipc_dir"]
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        assert os.path.isdir(ipc_dir)  # nobody could clean up after a SIGKILL ...
    finally:
        d.close()
    live = tmp_path / "sweeperd-live"
    live.mkdir()
    (live / "pid").write_text(str(os.getpid()))
    (tmp_path / "sweeperd-unknown").mkdir()  # no pid file: not judged
    stale = tmp_path / "sweeperd-stale"
    stale.mkdir()
    (stale / "pid").write_text(Path(ipc_dir, "pid").read_text())  # the killed one
    assert remove_stale_dirs(str(tmp_path)) == [str(stale)]
    assert live.exists() and (tmp_path / "sweeperd-unknown").exists()
    d2 = Daemon("--heap-mib", "16", "--sweepers", "1", "--mutators", "1")
    try:
        assert not os.path.exists(ipc_dir)  # ... the next daemon's start did
        assert d2.stop() == 0
    finally:
        d2.close()


def test_the_private_dir_goes_in_systemds_runtime_directory(tmp_path):
    """With ``$RUNTIME_DIRECTORY`` (``RuntimeDirectory=`` in the unit) the worker socket's
    private directory is made there, 0700, and is gone after a clean stop."""
    d = Daemon("--heap-mib", "16", "--sweepers", "1", "--mutators", "1",
               env={"RUNTIME_DIRECTORY": f"{tmp_path}:/nonexistent"})
    try:
        ipc_dir = d.status()["ipc_dir"]
        assert os.path.dirname(ipc_dir) == str(tmp_path)
        assert os.stat(ipc_dir).st_mode & 0o777 == 0o700
        assert os.path.exists(os.path.join(ipc_dir, "workers.sock"))
        assert d.stop() == 0
        assert list(tmp_path.iterdir()) == []
    finally:
        d.close()
