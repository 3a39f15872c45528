"""A worker's link: a worker dying of an exception sends its traceback first (real zmq)."""

from __future__ import annotations

import tempfile

import zmq

from sweeperd.wire import protocol
from sweeperd.wire.link import Link


def test_a_dying_worker_sends_its_traceback():
    with tempfile.TemporaryDirectory() as d:
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(f"ipc://{d}/w.sock")
        link = Link(f"ipc://{d}/w.sock", "sweeper", 3)
        try:
            try:
                raise ValueError("the sweeper's own bug")
            except ValueError:
                link.crashed()
            msgs = []
            while router.poll(2000) and len(msgs) < 2:
                _ident, frame = router.recv_multipart()
                msgs.append(protocol.decode(frame, protocol.FROM_WORKER))
            assert [m.type for m in msgs] == ["hello", "crashed"]
            tb = msgs[1]["traceback"]
            assert "ValueError: the sweeper's own bug" in tb and "Traceback" in tb
        finally:
            link.close()
            router.close()
            ctx.term()
