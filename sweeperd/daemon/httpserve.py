"""The ``/metrics`` HTTP server: prometheus-client's handler behind a bounded listener.

Theory of operation
-------------------
prometheus-client's own ``start_http_server`` starts a thread for every connection and waits on
each without a timeout, so any local user who opens connections and sends nothing adds threads
(and their stacks) to the coordinator until it runs out.  This server serves the same handler
(:class:`prometheus_client.exposition.MetricsHandler`, so the exposition, content negotiation
and compression are the library's) with bounds that a peer cannot outlast:

* at most ``max_connections`` connections are served at once, one thread each;
* a connection has ``timeout_s`` in all, from its accept to its last byte (the server's loop
  shuts down one that overstays: a peer that trickles a byte a second is cut like a silent
  one), and ``timeout_s`` for any one read or write (the socket's timeout);
* when every slot is taken, a new connection **evicts** the oldest one that has not finished
  sending its request head (a real scraper sends its head at once; one still "sending" is
  idle, trickling, or too slow to matter), so that peers holding connections open cannot lock
  a scraper out.  Only when every slot is busy answering a request is a new connection closed
  at once, without a thread.

Every connection dropped is counted by why (:attr:`BoundedServer.dropped`): ``full`` (closed
at once), ``evicted``, ``deadline``.  A scrape is one short request (Prometheus scrapes a target
one request at a time, within a 10 s scrape timeout by default), so the bounds never touch a
real scraper.  Each connection serves one request and is closed (HTTP/1.0).

Invariants: threads serving connections <= ``max_connections``; a slot taken in
``process_request`` is given back on every path (served, failed, evicted, timed out); a
connection is in :attr:`BoundedServer.conns` exactly while its thread serves it.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http.server import HTTPServer
from typing import Any

from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

MAX_CONNECTIONS = 8
TIMEOUT_S = 10.0  # Prometheus's default scrape_timeout
EVICT_WAIT_S = 2.0  # how long a new connection waits for the slot its eviction frees
POLL_S = 0.2  # the server loop's poll: how late a deadline may be enforced
DROP_REASONS = ("full", "evicted", "deadline")


@dataclass
class Conn:
    accepted: float  # monotonic
    head_done: bool = False  # its request line and headers are read: it is being answered
    closing: bool = False  # shut down by us (evicted or past its deadline)


class BoundedServer(socketserver.ThreadingMixIn, HTTPServer):
    """A threading HTTP server with at most ``max_connections`` threads at once."""

    daemon_threads = True
    block_on_close = False  # (close() does not wait for a peer that is timing out)

    def __init__(self, addr: tuple[Any, ...], handler: type, family: int,
                 max_connections: int, timeout_s: float,
                 clock: Any = time.monotonic) -> None:
        if max_connections < 1 or not timeout_s > 0:
            raise ValueError(f"max_connections {max_connections} must be >= 1 and "
                             f"timeout_s {timeout_s} > 0")
        self.address_family = family
        self.slots = threading.BoundedSemaphore(max_connections)
        self.timeout_s = timeout_s
        self.clock = clock
        self.conns: dict[socket.socket, Conn] = {}
        self.guard = threading.Lock()  # conns and dropped: the loop's and the handlers'
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        super().__init__(addr, handler)

    # --- the server loop's thread -------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False) and (
                not self._evict_oldest_idle() or not self.slots.acquire(timeout=EVICT_WAIT_S)):
            self._drop("full")
            self.shutdown_request(request)
            return
        with self.guard:
            self.conns[request] = Conn(self.clock())
        try:
            super().process_request(request, client_address)  # starts its thread
        except BaseException:
            self._forget(request)
            self.slots.release()
            raise

    def service_actions(self) -> None:
        """Each turn of the loop: shut down connections past their deadline."""
        now = self.clock()
        with self.guard:
            late = [s for s, c in self.conns.items()
                    if not c.closing and now - c.accepted > self.timeout_s]
            for s in late:
                self.conns[s].closing = True
                self.dropped["deadline"] += 1
        for s in late:
            _shut(s)

    def _evict_oldest_idle(self) -> bool:
        with self.guard:
            idle = [(c.accepted, id(s), s) for s, c in self.conns.items()
                    if not c.head_done and not c.closing]
            if not idle:
                return False
            victim = min(idle)[2]
            self.conns[victim].closing = True
            self.dropped["evicted"] += 1
        _shut(victim)  # its thread reads EOF, ends, and gives its slot back
        return True

    def _drop(self, reason: str) -> None:
        with self.guard:
            self.dropped[reason] += 1

    # --- a connection's thread ----------------------------------------------------------------

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)
            self.slots.release()

    def head_done(self, request: Any) -> None:
        with self.guard:
            c = self.conns.get(request)
            if c is not None:
                c.head_done = True

    def _forget(self, request: Any) -> None:
        with self.guard:
            self.conns.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A peer that timed out, reset or was cut: nothing to log (the library prints a
        traceback)."""


def _shut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):  # (already closed by its thread)
        s.shutdown(socket.SHUT_RDWR)


def serve(registry: Collector, host: str, port: int, max_connections: int = MAX_CONNECTIONS,
          timeout_s: float = TIMEOUT_S) -> BoundedServer:
    """Bind ``host:port`` (port 0: any free one) and serve ``registry`` from a daemon thread;
    returns the server (``server_port``, ``shutdown()`` then ``server_close()`` to stop).
    Raises OSError if the address cannot be bound (in use, not ours, not resolvable)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(e.errno, f"{host!r} does not resolve: {e.strerror}") from e
    family, _, _, _, sockaddr = info[0]

    class Handler(MetricsHandler):
        timeout = timeout_s  # StreamRequestHandler: the socket's timeout, each read and write
        disable_nagle_algorithm = True  # headers then body: no wait for the headers' ACK

        def parse_request(self) -> bool:
            ok = bool(super().parse_request())
            server.head_done(self.request)  # (answered now, or refused: not idle either way)
            return ok

    Handler.registry = registry
    server = BoundedServer(tuple(sockaddr), Handler, family, max_connections, timeout_s)
    threading.Thread(target=server.serve_forever, args=(POLL_S,), name="metrics-http",
                     daemon=True).start()
    return server
