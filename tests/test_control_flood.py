"""Bounded memory whatever a peer sends on the control socket.

Four connections each try to send 1,000 frames of 1 MiB: the coordinator's MAXMSGSIZE
(``protocol.MAX_FRAME`` + 4 KiB) drops each connection at the first frame's header, before
anything is buffered.  Then four connections each send 1,000 frames of about 64 KiB (which
pass MAXMSGSIZE) and never read a reply: at most ``CONTROL_HWM`` wait per connection, the
rest wait in the peer (blocked by the kernel's socket buffer), every one is answered, and
replies nobody reads are dropped past the high-water mark.  The coordinator's resident memory
(VmRSS and RssAnon from /proc, sampled through the flood) grows by at most 16 MiB.  Before
this change (RCVHWM 1000, MAXMSGSIZE 1 MiB) the same flood grew it by hundreds of MiB.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import zmq

from sweeperd.wire import protocol

from .daemon import Daemon

CONNECTIONS = 4
FRAMES = 1000
BUDGET = 16 << 20


def _kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                out[k] = int(v.split()[0]) << 10
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Pss", "Pss_Anon"):
                out[k] = int(v.split()[0]) << 10
    return out


class Peak:
    """The largest of each figure, sampled until stopped (a thread)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.stopping = pid, _kib(pid), False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            try:
                now = _kib(self.pid)
            except OSError:  # the daemon is gone (a failed test stopped it)
                return
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(0.02)

    def stop(self) -> dict[str, int]:
        self.stopping = True
        self.thread.join(60)
        return self.peak


def _zmtp_dealer(path: str) -> socket.socket:
    """A raw ZMTP 3.0 peer (NULL mechanism, a DEALER): frames go out as we write them,
    with nothing of libzmq's own queueing on our side."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0"
    s.sendall(greeting.ljust(64, b"\0"))
    prop = bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = bytes([5]) + b"READY" + prop
    s.sendall(bytes([0x04, len(body)]) + body)
    _recv_exactly(s, 64)  # the coordinator's greeting, then its READY: only then may a
    flags, size = _recv_exactly(s, 2)  # message follow (before, it is taken for a command)
    assert flags == 0x04, flags
    assert _recv_exactly(s, size)[1:6] == b"READY"
    return s


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"the coordinator closed during the handshake ({out!r})")
        out += chunk
    return out


def _flood_raw(path: str, size: int, frames: int, refused: list[int]) -> None:
    payload = b"\x01\x00" + b"\x02" + struct.pack(">Q", size) + b"x" * size  # delimiter, frame
    s = _zmtp_dealer(path)
    try:
        for _ in range(frames):
            s.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        refused.append(1)
    finally:
        s.close()


def _flood_zmq(ctx: zmq.Context, addr: str, sizes: list[int], keep: list[zmq.Socket]) -> None:
    """Send every frame, then leave the socket open (in ``keep``; the context's destroy closes
    it): what is still queued on our side must reach the coordinator, not be dropped."""
    s = ctx.socket(zmq.DEALER)  # pipelines requests, never reads a reply
    keep.append(s)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 4)  # our side holds little: the flood really goes out
    s.connect(addr)
    for n in sizes:
        s.send_multipart([b"", b"x" * n])  # blocks while the coordinator holds enough


def _grown(before: dict[str, int], peak: dict[str, int]) -> dict[str, float]:
    return {k: (peak[k] - before[k]) / (1 << 20) for k in before}


def test_a_control_flood_grows_the_coordinator_by_at_most_16_mib():
    d = Daemon("--heap-mib", "16", "--sweepers", "1", "--mutators", "0")
    ctx = zmq.Context()
    keep: list[zmq.Socket] = []
    try:
        path = d.control[len("ipc://"):]
        st = d.status()
        pid = st["pid"]
        warm = [threading.Thread(target=_flood_zmq, args=(ctx, d.control, [60_000] * 20, keep))
                for _ in range(CONNECTIONS)]
        for t in warm:  # every code path of the flood run once before the baseline
            t.start()
        for t in warm:
            t.join(120)
        d.wait_for(lambda s: s["control_requests"].get("invalid", {}).get("error", 0)
                   >= 20 * CONNECTIONS, what="the warm-up answered")
        before = _kib(pid)

        # 1. frames of 1 MiB: each connection is dropped at its first frame's header
        peak = Peak(pid)
        refused: list[int] = []
        big = [threading.Thread(target=_flood_raw, args=(path, 1 << 20, FRAMES, refused))
               for _ in range(CONNECTIONS)]
        for t in big:
            t.start()
        for t in big:
            t.join(300)
            assert not t.is_alive(), "a 1 MiB flood neither sent nor refused"
        assert len(refused) == CONNECTIONS  # every flood was cut off, none was swallowed
        grown = _grown(before, peak.stop())
        assert grown["VmRSS"] <= BUDGET >> 20 and grown["RssAnon"] <= BUDGET >> 20, grown
        base = d.status()["control_requests"].get("invalid", {}).get("error", 0)

        # 2. frames of ~64 KiB that pass MAXMSGSIZE, from peers that never read a reply
        sizes = [protocol.MAX_FRAME + 1000, protocol.MAX_FRAME - 1] * (FRAMES // 2)
        peak = Peak(pid)
        small = [threading.Thread(target=_flood_zmq, args=(ctx, d.control, sizes, keep))
                 for _ in range(CONNECTIONS)]
        for t in small:
            t.start()
        for t in small:
            t.join(600)
            assert not t.is_alive(), "a 64 KiB flood was not taken"
        st = d.wait_for(lambda s: s["control_requests"].get("invalid", {}).get("error", 0)
                        >= base + CONNECTIONS * FRAMES, timeout=600,
                        what="every flooded frame read and answered")
        grown = _grown(before, peak.stop())
        print(f"coordinator growth over the floods (MiB): {grown}")
        assert grown["VmRSS"] <= BUDGET >> 20 and grown["RssAnon"] <= BUDGET >> 20, grown
        assert st["control_errors"]["oversized"] >= CONNECTIONS * FRAMES // 2
        assert d.status()["ok"]  # and it still serves
        assert d.stop() == 0
    finally:
        ctx.destroy(0)
        d.close()
