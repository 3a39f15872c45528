"""The /metrics listener: bounded connections, each with a timeout, the library's exposition.

Real sockets and a real prometheus-client registry; each wait is for the event it asserts."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from sweeperd.daemon import httpserve

DEADLINE_S = 60.0


@pytest.fixture
def registry() -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("probe_hits", "A probe counter.", registry=r).inc(3)
    return r


def _until(pred, what: str, deadline_s: float = DEADLINE_S):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if (v := pred()):
            return v
        time.sleep(0.02)
    raise AssertionError(f"not within {deadline_s:g}s: {what}")


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(DEADLINE_S)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_scrape_is_the_registry_exposition(registry):
    srv = httpserve.serve(registry, "127.0.0.1", 0)
    try:
        body = _until(lambda: _scrape(srv.server_port), "a scrape answered")
        assert "probe_hits_total 3.0" in body
    finally:
        srv.shutdown()
        srv.server_close()


def test_connections_beyond_the_bound_are_closed_without_a_thread(registry):
    srv = httpserve.serve(registry, "127.0.0.1", 0, max_connections=4, timeout_s=DEADLINE_S * 2)
    idle: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(4):  # each takes a slot, sends nothing
            idle.append(socket.create_connection(("127.0.0.1", srv.server_port)))
        _until(lambda: threading.active_count() >= before + 4, "4 connections served")
        extra = [socket.create_connection(("127.0.0.1", srv.server_port)) for _ in range(16)]
        for s in extra:  # every one beyond the bound is closed by the server at once
            assert _closed_by_server(s)
            s.close()
        assert srv.refused == 16
        assert threading.active_count() <= before + 4
        assert _scrape(srv.server_port) is None  # (still full: refused, not queued)
        for s in idle:  # the peers go: their slots come back
            s.close()
        body = _until(lambda: _scrape(srv.server_port), "a scrape once the idle peers left")
        assert "probe_hits_total" in body
    finally:
        for s in idle:
            s.close()
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("sent", [b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"])
def test_a_peer_that_stops_sending_is_dropped_after_the_timeout(registry, sent):
    srv = httpserve.serve(registry, "127.0.0.1", 0, max_connections=1, timeout_s=0.5)
    try:
        s = socket.create_connection(("127.0.0.1", srv.server_port))
        s.sendall(sent)
        assert _closed_by_server(s)  # the server gave up on it
        s.close()
        body = _until(lambda: _scrape(srv.server_port), "the only slot free again")
        assert "probe_hits_total" in body
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_peer_that_never_reads_is_dropped(registry):
    """A scraper that sends a request and never reads the answer holds its slot only until the
    write times out (the body is larger than the socket buffers)."""
    big = CollectorRegistry()
    for i in range(3000):
        Counter(f"filler_{i}", "x" * 200, registry=big).inc()
    srv = httpserve.serve(big, "127.0.0.1", 0, max_connections=1, timeout_s=0.5)
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", srv.server_port))
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = _until(lambda: _scrape(srv.server_port), "the slot freed from the non-reader")
        assert "filler_0_total" in body
        s.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_an_address_that_does_not_resolve_is_an_oserror(registry):
    with pytest.raises(OSError, match="does not resolve"):
        httpserve.serve(registry, "no-such-host.invalid", 0)


@pytest.mark.parametrize("bad", [dict(max_connections=0), dict(timeout_s=0),
                                 dict(timeout_s=float("nan"))])
def test_bounds_must_be_positive(registry, bad):
    with pytest.raises(ValueError):
        httpserve.serve(registry, "127.0.0.1", 0, **bad)
