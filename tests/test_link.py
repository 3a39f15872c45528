"""A worker's link: a worker dying of an exception sends its traceback first (real zmq)."""

from __future__ import annotations

import tempfile

import zmq

from sweeperd.roles import Role
from sweeperd.wire import protocol
from sweeperd.wire.link import Link


def test_a_dying_worker_sends_its_traceback():
    with tempfile.TemporaryDirectory() as d:
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(f"ipc://{d}/w.sock")
        link = Link(f"ipc://{d}/w.sock", Role.SWEEPER, 3)
        try:
            try:
                raise ValueError("the sweeper's own bug")
            except ValueError:
                link.crashed()
            msgs = []
            while router.poll(2000) and len(msgs) < 2:
                _ident, frame = router.recv_multipart()
                msgs.append(protocol.decode(frame, protocol.FROM_WORKER))
            assert [type(m) for m in msgs] == [protocol.HelloMsg, protocol.CrashedMsg]
            assert (msgs[0].role, msgs[0].id) == (Role.SWEEPER, 3)
            tb = msgs[1].traceback
            assert "ValueError: the sweeper's own bug" in tb and "Traceback" in tb
        finally:
            link.close()
            router.close()
            ctx.term()
