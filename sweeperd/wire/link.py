"""A worker's link to the coordinator: one zmq DEALER socket speaking sweeperd.protocol.

The worker names itself (role, id, pid) in its socket identity and its ``hello``.  Frames from
the coordinator are validated like any other input; a malformed one is logged and dropped.
:meth:`Link.orphaned` tells a worker whose coordinator died (its parent pid changed) to exit.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

import zmq

from sweeperd.errors import Throw
from sweeperd.roles import Role
from sweeperd.wire import protocol


class Link:
    def __init__(self, endpoint: str, role: Role, wid: int) -> None:
        self.ppid = os.getppid()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.setsockopt(zmq.IDENTITY, f"{role}-{wid}-{os.getpid()}".encode())
        self.sock.connect(endpoint)
        self.send(protocol.HelloMsg(role=role, id=wid, pid=os.getpid()))

    def send(self, msg: protocol.WorkerMsg) -> None:
        """Send one message (validated: :class:`~sweeperd.wire.protocol.ProtocolError`)."""
        self.sock.send(protocol.encode(msg))

    def recv(self, timeout_ms: int) -> protocol.CoordinatorMsg | None:
        """The next message from the coordinator (a Struct to ``match`` on), or None after
        ``timeout_ms`` or for a malformed frame (logged)."""
        if not self.sock.poll(timeout_ms):
            return None
        frame = self.sock.recv()
        try:
            return protocol.decode(frame, protocol.TO_WORKER)
        except protocol.ProtocolError as e:
            print(f"worker {os.getpid()}: dropped a bad frame from the coordinator: {e}",
                  file=sys.stderr)
            return None

    def crashed(self) -> None:
        """Tell the coordinator the traceback of the exception this worker is dying of (call
        from an ``except`` block), and, if it is a broken heap invariant (a
        :class:`~sweeperd.errors.Throw`), its message; best effort: the worker dies either
        way."""
        tb = traceback.format_exc()[-protocol.MAX_TRACEBACK:]
        e = sys.exc_info()[1]
        throw = str(e)[: protocol.MAX_THROW] if isinstance(e, Throw) else ""
        with contextlib.suppress(Exception):
            self.send(protocol.CrashedMsg(traceback=tb, throw=throw))

    def orphaned(self) -> bool:
        return os.getppid() != self.ppid

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()
