"""A worker's link: a worker dying of an exception sends its traceback first, and the broken
heap invariant's message if it died of one (real zmq)."""

from __future__ import annotations

import tempfile

import pytest
import zmq

from sweeperd.errors import SweepIncreasedAllocCount
from sweeperd.roles import Role
from sweeperd.wire import protocol
from sweeperd.wire.link import Link


def _crash_of(exc: BaseException) -> protocol.CrashedMsg:
    with tempfile.TemporaryDirectory() as d:
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(f"ipc://{d}/w.sock")
        link = Link(f"ipc://{d}/w.sock", Role.SWEEPER, 3)
        try:
            try:
                raise exc
            except type(exc):
                link.crashed()
            msgs = []
            while len(msgs) < 2 and router.poll(20_000):
                _ident, frame = router.recv_multipart()
                msgs.append(protocol.decode(frame, protocol.FROM_WORKER))
            assert [type(m) for m in msgs] == [protocol.HelloMsg, protocol.CrashedMsg]
            assert (msgs[0].role, msgs[0].id) == (Role.SWEEPER, 3)
            return msgs[1]
        finally:
            link.close()
            router.close()
            ctx.term()


def test_a_dying_worker_sends_its_traceback():
    m = _crash_of(ValueError("the sweeper's own bug"))
    assert "ValueError: the sweeper's own bug" in m.traceback and "Traceback" in m.traceback
    assert m.throw == ""  # its own bug: a death the coordinator recovers from


@pytest.mark.parametrize("detail", ["nalloc 3 > allocCount; span 7", "x" * 5000])
def test_a_worker_dying_of_a_throw_names_it(detail):
    m = _crash_of(SweepIncreasedAllocCount(detail))
    assert m.throw.startswith("sweep increased allocation count: ")
    assert len(m.throw) <= protocol.MAX_THROW and m.throw[-20:] in f"...: {detail}"
    assert "SweepIncreasedAllocCount" in m.traceback
