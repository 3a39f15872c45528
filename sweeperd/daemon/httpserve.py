"""The ``/metrics`` HTTP server: prometheus-client's handler behind a bounded listener.

Theory of operation
-------------------
prometheus-client's own ``start_http_server`` starts a thread for every connection and waits on
each without a timeout, so any local user who opens connections and sends nothing adds threads
(and their stacks) to the coordinator until it runs out.  This server serves the same handler
(:class:`prometheus_client.exposition.MetricsHandler`, so the exposition, content negotiation
and compression are the library's) with two bounds:

* at most ``max_connections`` connections are served at once; one more is closed at once,
  without a thread, and counted (:attr:`BoundedServer.refused`);
* every connection has ``timeout_s`` for each read and write (the socket's timeout): a peer
  that sends nothing, or reads nothing, is dropped when it runs out, and its slot freed.

A scrape is one short request (Prometheus scrapes a target one request at a time, within a
10 s scrape timeout by default), so the bounds never touch a real scraper; they only stop a
peer from growing the process.  Each connection serves one request and is closed (HTTP/1.0),
so a slot is never held by an idle keep-alive.

Invariants: threads serving connections <= ``max_connections``; a slot taken by
``process_request`` is given back on every path (served, failed, timed out).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from http.server import HTTPServer
from typing import Any

from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

MAX_CONNECTIONS = 8
TIMEOUT_S = 10.0  # Prometheus's default scrape_timeout


class BoundedServer(socketserver.ThreadingMixIn, HTTPServer):
    """A threading HTTP server with at most ``max_connections`` threads at once."""

    daemon_threads = True
    block_on_close = False  # (close() does not wait for a peer that is timing out)

    def __init__(self, addr: tuple[Any, ...], handler: type, family: int,
                 max_connections: int, timeout_s: float) -> None:
        if max_connections < 1 or not timeout_s > 0:
            raise ValueError(f"max_connections {max_connections} must be >= 1 and "
                             f"timeout_s {timeout_s} > 0")
        self.address_family = family
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0  # connections closed at once: every slot was taken
        self.conn_timeout_s = timeout_s
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts its thread
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A peer that timed out or reset: nothing to log (the library prints a traceback)."""


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

    Handler.registry = registry
    server = BoundedServer(tuple(sockaddr), Handler, family, max_connections, timeout_s)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
