"""The /metrics listener: bounded connections that a peer cannot outlast, the library's
exposition.  Real sockets and a real prometheus-client registry; each wait is for the event it
asserts, never for a duration."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from sweeperd.daemon import httpserve

DEADLINE_S = 60.0


@pytest.fixture
def registry() -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("probe_hits", "A probe counter.", registry=r).inc(3)
    return r


@contextlib.contextmanager
def served(registry: CollectorRegistry, **kw: float) -> Iterator[httpserve.BoundedServer]:
    srv = httpserve.serve(registry, "127.0.0.1", 0, **kw)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _until(pred, what: str, deadline_s: float = DEADLINE_S):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if (v := pred()):
            return v
        time.sleep(0.02)
    raise AssertionError(f"not within {deadline_s:g}s: {what}")


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()
    except OSError:
        return None


def _closed_by_server(s: socket.socket, deadline_s: float = DEADLINE_S) -> bool:
    s.settimeout(deadline_s)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def _connections(srv: httpserve.BoundedServer) -> list[httpserve.Conn]:
    with srv.guard:
        return list(srv.conns.values())


def test_a_scrape_is_the_registry_exposition(registry):
    with served(registry) as srv:
        body = _until(lambda: _scrape(srv.server_port), "a scrape answered")
        assert "probe_hits_total 3.0" in body


def test_idle_peers_holding_every_slot_are_evicted_oldest_first_for_a_scraper(registry):
    with served(registry, max_connections=4, timeout_s=DEADLINE_S * 2) as srv:
        before = threading.active_count()
        idle = []
        for n in range(1, 5):  # each takes a slot, sends nothing; in order
            idle.append(socket.create_connection(("127.0.0.1", srv.server_port)))
            _until(lambda n=n: len(_connections(srv)) == n, "the peer being served")
        body = _scrape(srv.server_port)  # first try: it must not wait for a timeout
        assert body is not None and "probe_hits_total" in body
        assert _closed_by_server(idle[0])  # the oldest went
        for s in idle[1:]:  # the others stay
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
        assert srv.dropped == {"full": 0, "evicted": 1, "deadline": 0}
        assert threading.active_count() <= before + 4
        for s in idle:
            s.close()


def test_trickling_peers_on_every_slot_cannot_lock_a_scraper_out(registry):
    """The newcomer's attack: 8 peers send a request head a byte at a time, each reopening when
    cut; a scraper beside them is answered (before the fix, 0 of 25 scrapes were)."""
    stop = threading.Event()

    def trickle(port: int) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\r\n")
                    while not stop.wait(0.1):
                        s.sendall(b"X")
            except OSError:
                continue

    with served(registry, max_connections=8, timeout_s=DEADLINE_S) as srv:
        threads = [threading.Thread(target=trickle, args=(srv.server_port,), daemon=True)
                   for _ in range(8)]
        try:
            for t in threads:
                t.start()
            for _ in range(10):
                _until(lambda: sum(not c.closing and not c.head_done
                                   for c in _connections(srv)) == 8,
                       "8 trickling peers on every slot")  # (not a scrape's, still closing)
                body = _until(lambda: _scrape(srv.server_port), "a scrape among the tricklers")
                assert "probe_hits_total" in body
            assert srv.dropped["evicted"] >= 10  # each scrape found every slot taken
        finally:
            stop.set()
            for t in threads:
                t.join(DEADLINE_S)


def test_a_peer_that_trickles_is_cut_at_its_deadline(registry):
    """A byte every 0.1 s never lets a read time out (1 s); only the whole connection's
    deadline (1 s) can end it."""
    with served(registry, max_connections=2, timeout_s=1.0) as srv:
        s = socket.create_connection(("127.0.0.1", srv.server_port))
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        end = time.monotonic() + DEADLINE_S
        cut = False
        while not cut and time.monotonic() < end:
            try:
                s.sendall(b"X")
            except OSError:
                cut = True
                break
            if select.select([s], [], [], 0.1)[0]:
                cut = _closed_by_server(s, 1.0)
        s.close()
        assert cut, "the trickler was never cut"
        assert srv.dropped["deadline"] == 1


@pytest.mark.parametrize("sent", [b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"])
def test_a_peer_that_stops_sending_is_dropped(registry, sent):
    with served(registry, max_connections=1, timeout_s=0.5) as srv:
        s = socket.create_connection(("127.0.0.1", srv.server_port))
        s.sendall(sent)
        assert _closed_by_server(s)  # the server gave up on it
        s.close()
        body = _until(lambda: _scrape(srv.server_port), "the only slot free again")
        assert "probe_hits_total" in body


def _big_registry() -> CollectorRegistry:
    big = CollectorRegistry()
    for i in range(1000):  # ~6 MB of exposition: more than both sockets' buffers hold
        Counter(f"filler_{i}", "x" * 6000, registry=big).inc()
    return big


def _non_reader(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    return s


def test_when_every_slot_is_answering_a_new_connection_is_closed_at_once():
    """Two peers asked and never read: both slots are busy answering (not idle, so not
    evicted); a third connection is closed at once and counted ``full``."""
    with served(_big_registry(), max_connections=2, timeout_s=DEADLINE_S) as srv:
        readers = [_non_reader(srv.server_port) for _ in range(2)]
        _until(lambda: sum(c.head_done for c in _connections(srv)) == 2,
               "both requests being answered")
        extra = socket.create_connection(("127.0.0.1", srv.server_port))
        assert _closed_by_server(extra)
        extra.close()
        assert srv.dropped == {"full": 1, "evicted": 0, "deadline": 0}
        for s in readers:
            s.close()


def test_a_peer_that_never_reads_is_cut_and_its_slot_freed():
    with served(_big_registry(), max_connections=1, timeout_s=2.0) as srv:
        s = _non_reader(srv.server_port)
        _until(lambda: srv.dropped["deadline"] == 1 or not _connections(srv),
               "the non-reader cut")
        body = _until(lambda: _scrape(srv.server_port), "the slot freed from the non-reader")
        assert "filler_0_total" in body
        s.close()


def test_an_address_that_does_not_resolve_is_an_oserror(registry):
    with pytest.raises(OSError, match="does not resolve"):
        httpserve.serve(registry, "no-such-host.invalid", 0)


@pytest.mark.parametrize("bad", [dict(max_connections=0), dict(timeout_s=0),
                                 dict(timeout_s=float("nan"))])
def test_bounds_must_be_positive(registry, bad):
    with pytest.raises(ValueError):
        httpserve.serve(registry, "127.0.0.1", 0, **bad)
