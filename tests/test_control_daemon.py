"""The closed control plane on a real daemon: read vs admin (``control.admin``), coalesced
``gc`` and ``scavenge``, ``sweeperd_control_requests_total``, the ipc socket's path (found
from the config, never stolen, never unlinked unless ours), and tcp only with CURVE."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import zmq

from sweeperd.daemon.control import read_cert, write_pair
from sweeperd.wire import protocol

from .daemon import Daemon

SMALL = ("--heap-mib", "32", "--sweepers", "1", "--mutators", "1")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sweeperd.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def _metric(d: Daemon, type_: str, outcome: str) -> float:
    with urllib.request.urlopen(d.metrics, timeout=30) as r:
        body = r.read().decode()
    line = f'sweeperd_control_requests_total{{outcome="{outcome}",type="{type_}"}} '
    m = re.search("^" + re.escape(line) + r"(\S+)$", body, re.M)
    assert m, f"no sweeperd_control_requests_total{{type={type_},outcome={outcome}}}"
    return float(m.group(1))


# Connect with a CURVE key pair and wait (60 s at most) for the handshake's end: prints
# "refused" if the daemon's ZAP handler refused the key, "accepted" if it completed.
CURVE_PROBE = """
import sys, time, zmq
from zmq.utils.monitor import recv_monitor_message
addr, pub, sec, server = sys.argv[1:5]
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub.encode(), sec.encode(), \
    server.encode()
mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
s.connect(addr)
if not mon.poll(60000):
    sys.exit("no handshake within 60 s")
ev = recv_monitor_message(mon)["event"]
print("refused" if ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "accepted")
mon.close(); s.close(); ctx.term()
"""


def _config(tmp_path: Path, text: str) -> str:
    p = tmp_path / "sweeperd.toml"
    p.write_text(text)
    return str(p)


def test_admin_false_refuses_gc_and_scavenge_naming_the_key_and_counts_them(tmp_path):
    d = Daemon(*SMALL, "--config", _config(tmp_path, "[control]\nadmin = false\n"))
    try:
        for kind in ("gc", "scavenge"):
            r = d.request(protocol.encode(kind))
            assert r["ok"] is False and r["reason"] == "admin_disabled", r
            assert "control.admin" in r["error"]
        assert d.request(protocol.encode("ping"))["pong"] is True
        st = d.status()
        assert st["control_requests"]["gc"] == {"refused": 1}
        assert st["control_requests"]["scavenge"] == {"refused": 1}
        assert st["control_requests"]["ping"] == {"ok": 1}
        d.wait_for(lambda s: s["control_requests"]["status"]["ok"] >= 2, what="status counted")
        assert _metric(d, "gc", "refused") == 1 and _metric(d, "gc", "ok") == 0
        r = _cli("gc", "--control", d.control)  # the CLI says so and exits 1
        assert r.returncode == 1 and "control.admin" in r.stdout
        assert d.stop() == 0
    finally:
        d.close()


def _all_up(st: dict) -> bool:
    return len(st["workers"]) == 3 and all(w["state"] == "alive" for w in st["workers"])


def _stop_outside_the_lock(st: dict, pid: int) -> None:
    """SIGSTOP ``pid`` while we hold the heap lock, so it cannot be frozen holding it (the
    coordinator would block on it): we let go only once the kernel shows it stopped."""
    from sweeperd.runtime.heap import Heap, HeapHandle

    with Heap.attach(HeapHandle.from_dict(st["heap_handle"])) as heap, heap.lock:
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
            assert time.monotonic() < deadline, f"{pid} did not stop"
            time.sleep(0.01)


def _drain(f, into: list[str]) -> threading.Thread:
    t = threading.Thread(target=lambda: into.extend(f), daemon=True)
    t.start()
    return t


def test_a_gc_while_one_is_pending_is_coalesced_and_starts_no_extra_cycle(tmp_path):
    """A mutator stopped (SIGSTOP) holds the cycle (in mark, or in a sweep it claimed a span
    of), so at most one more cycle can begin: of the ``gc`` requests after the stop, one sets
    the forced cycle pending, at most one more does after that cycle begins, and every other
    is coalesced.  After SIGCONT exactly as many forced cycles run as ``gc`` requests were not
    coalesced (gctrace's "(forced)")."""
    cfg = _config(tmp_path, "[control]\ndead_after_ms = 600000\n")
    d = Daemon(*SMALL, "--gctrace", "--config", cfg)
    err: list[str] = []
    try:
        assert d.proc.stderr is not None
        drain = _drain(d.proc.stderr, err)
        st = d.wait_for(_all_up, timeout=180, what="workers up")
        mut = next(w["pid"] for w in st["workers"] if w["role"] == "mutator")
        _stop_outside_the_lock(st, mut)
        try:
            replies = [d.request(protocol.encode("gc")) for _ in range(4)]
            assert all(r["ok"] for r in replies) and replies[0]["coalesced"] is False
            assert [r["coalesced"] for r in replies[1:]].count(False) <= 1, replies
            assert replies[2]["coalesced"] is True or replies[1]["coalesced"] is True, replies
            c0 = d.status()["cycle"]
        finally:
            os.kill(mut, signal.SIGCONT)
        started = sum(1 for r in replies if not r["coalesced"])
        st = d.wait_for(lambda s: s["cycle"] >= c0 + 3, timeout=180, what="3 more cycles")
        by = st["control_requests"]["gc"]
        assert by.get("ok", 0) == started and by.get("coalesced", 0) == 4 - started
        assert d.stop() == 0
        drain.join(60)
        forced = [ln for ln in err if ln.startswith("gc ") and ln.rstrip().endswith("(forced)")]
        assert len(forced) == started, (replies, forced)
    finally:
        d.close()


def test_a_scavenge_while_one_is_pending_is_coalesced(tmp_path):
    cfg = _config(tmp_path, "[control]\ndead_after_ms = 600000\n")
    d = Daemon(*SMALL, "--config", cfg)
    try:
        st = d.wait_for(_all_up, timeout=180, what="workers up")
        scav = next(w["pid"] for w in st["workers"] if w["role"] == "scavenger")
        _stop_outside_the_lock(st, scav)
        try:
            replies = []
            for _ in range(6):  # a heartbeat already in flight may acknowledge one
                replies.append(d.request(protocol.encode("scavenge")))
                if replies[-1].get("coalesced"):
                    break
            assert replies[-1]["ok"] and replies[-1]["coalesced"] is True, replies
            # ("busy: ask again" is the daemon's answer when a request would wait: not one)
            answered = [r for r in replies if r.get("reason") != "busy"]
            assert answered[0].get("by") == "scavenger" and answered[0]["coalesced"] is False, (
                replies)
        finally:
            os.kill(scav, signal.SIGCONT)
        d.wait_for(lambda s: not d.request(protocol.encode("scavenge"))["coalesced"],
                   what="the scavenger to acknowledge (its heartbeat)")
        by = d.status()["control_requests"]["scavenge"]
        assert by["coalesced"] >= 1 and by["ok"] >= 2
        assert _metric(d, "scavenge", "coalesced") == by["coalesced"]
        assert d.stop() == 0
    finally:
        d.close()


def test_a_second_daemon_on_the_same_socket_is_refused_and_the_first_keeps_it(tmp_path):
    d = Daemon(*SMALL)
    try:
        path = d.control[len("ipc://"):]
        ino = os.lstat(path).st_ino
        assert oct(os.lstat(path).st_mode & 0o777) == "0o600"
        r = _cli("run", *SMALL, "--control", d.control, "--metrics-addr", "127.0.0.1:0")
        assert r.returncode == 1 and path in r.stderr and "in use" in r.stderr, r.stderr
        assert os.lstat(path).st_ino == ino and d.status()["ok"]
        assert d.stop() == 0
        assert not os.path.lexists(path)  # our own socket: removed at close
    finally:
        d.close()


def test_a_file_at_the_control_path_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "c.sock"
    path.write_text("not a socket")
    r = _cli("run", *SMALL, "--control", f"ipc://{path}", "--metrics-addr", "127.0.0.1:0")
    assert r.returncode == 1 and "not a socket; not removing" in r.stderr, r.stderr
    assert path.read_text() == "not a socket"


def test_a_file_put_in_place_of_the_socket_while_running_survives_the_stop(tmp_path):
    path = tmp_path / "c.sock"
    d = Daemon(*SMALL, "--control", f"ipc://{path}")
    try:
        assert d.control == f"ipc://{path}"
        path.unlink()
        path.write_text("someone else's")
        assert d.stop() == 0
        assert path.read_text() == "someone else's"
    finally:
        d.close()


def test_clients_find_the_daemon_from_the_config_alone():
    rt = tempfile.mkdtemp(prefix="sweeperd_rt")  # 0700, as RuntimeDirectoryMode=0700
    env = {"RUNTIME_DIRECTORY": rt}
    d = Daemon(*SMALL, "--metrics-addr", "127.0.0.1:0", ephemeral_ports=False, env=env)
    try:
        assert d.control == f"ipc://{rt}/control.sock"  # ipc://auto, the default
        r = _cli("gc", env=env)
        assert r.returncode == 0 and '"ok": true' in r.stdout, r.stderr
        r = _cli("status", env=env)
        assert r.returncode == 0 and f'"control_addr": "{d.control}"' in r.stdout
        cfg = Path(rt) / "client.toml"  # or a config naming the path
        cfg.write_text(f'[control]\naddr = "{d.control}"\n')
        r = _cli("scavenge", "--config", str(cfg))
        assert r.returncode == 0 and '"ok": true' in r.stdout, r.stderr
        assert d.stop() == 0
    finally:
        d.close()
        for f in Path(rt).iterdir():
            f.unlink()
        os.rmdir(rt)


def test_tcp_is_served_only_to_an_allowed_curve_key(tmp_path):
    server_pub, server_sec = write_pair(str(tmp_path), "server")
    alice_pub, alice_sec = write_pair(str(tmp_path), "alice")
    _, mallory_sec = write_pair(str(tmp_path), "mallory")
    allowed = tmp_path / "allowed"
    allowed.write_text(Path(alice_pub).read_text())
    cfg = _config(tmp_path, f'[control]\ncurve_server_key = "{server_sec}"\n'
                            f'curve_allowed_clients = "{allowed}"\n')
    a, s = read_cert(alice_sec), read_cert(server_pub)
    assert a.secret is not None
    d = Daemon(*SMALL, "--config", cfg, "--control", "tcp://127.0.0.1:0",
               curve=(a.public, a.secret, s.public))
    try:
        assert d.control.startswith("tcp://127.0.0.1:")
        assert d.status()["ok"]
        r = _cli("gc", "--control", d.control, "--curve-server-key", server_pub,
                 "--curve-client-key", alice_sec)
        assert r.returncode == 0 and '"ok": true' in r.stdout, r.stderr
        r = _cli("gc", "--control", d.control, "--curve-server-key", server_pub,
                 "--curve-client-key", mallory_sec, "--timeout", "3")
        assert r.returncode == 1 and "no answer" in r.stderr
        m = read_cert(mallory_sec)
        assert m.secret is not None
        for key, seen in ((m, "refused"), (a, "accepted")):  # the handshake's own verdict
            r = subprocess.run([sys.executable, "-c", CURVE_PROBE, d.control, key.public,
                                key.secret or "", s.public], capture_output=True, text=True,
                               timeout=120)
            assert r.stdout.strip() == seen, (r.stdout, r.stderr)
        d.wait_for(lambda st: st["control_requests"].get("handshake", {}).get("refused", 0)
                   >= 1, what="mallory's key counted as refused")
        ctx = zmq.Context()  # and a client with no CURVE at all gets nothing either
        try:
            plain = ctx.socket(zmq.REQ)
            plain.setsockopt(zmq.LINGER, 0)
            plain.connect(d.control)
            plain.send(protocol.encode("gc"))
            assert not plain.poll(3000)
            plain.close()
        finally:
            ctx.term()
        assert d.status()["control_requests"]["gc"] == {"ok": 1}  # alice's only
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize("frames", [[b'{"v":1,"type":"status"}', b"x"], [b"\xff"]])
def test_frames_that_cannot_be_decoded_are_counted_as_invalid(frames):
    d = Daemon(*SMALL)
    try:
        r = d.request(frames)
        assert r["ok"] is False
        assert d.status()["control_requests"]["invalid"] == {"error": 1}
        assert d.stop() == 0
    finally:
        d.close()
