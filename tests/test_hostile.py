"""A live daemon under hostile input on both sockets: every pathological class of frame, a
worker impersonation, and a flood; it keeps cycling, answers status, and counts each refusal."""

from __future__ import annotations

import os
import threading
import time

import zmq

from .daemon import Daemon

PATHOLOGICAL = [
    b"[" * 5000,  # deep nesting (RecursionError in json.loads before)
    b"1" * 4301,  # past Python's integer-digit limit (ValueError before)
    b'{"v":1,"type":"sweep","cycle":' + b"9" * 50_000 + b"}",
    b'{"v":1,"type":"resume","cycle":1,"sweep_pages_per_byte":NaN}',
    b'{"v":1,"type":"resume","cycle":1,"sweep_pages_per_byte":1e999}',
    b'{"v":1,"type":"heartbeat","stats":{' + b",".join(b'"k%d":1' % i for i in range(100))
    + b"}}",
    b'{"v":1,"type":"swept","cycle":1,"stats":{"spans":[[[[[[[]]]]]]]}}',
    b'{"v":1,"type":"status","type":"gc","x":{"a":{"b":{"c":[]}}}}',
    b"\xff\xfe\x00garbage",
    b'"just a string"',
    b"null",
]


def test_pathological_frames_on_both_sockets_are_refused_and_counted():
    d = Daemon("--heap-mib", "64", "--sweepers", "2", "--mutators", "2")
    ctx = zmq.Context()
    try:
        st0 = d.wait_for(lambda s: s["cycle"] >= 2, what="2 cycles")
        for frame in PATHOLOGICAL:
            r = d.request(frame)
            assert r["ok"] is False and r["reason"] in {
                "not_json", "not_object", "bad_field", "bad_version", "unknown_type"}, r
        # the worker socket: the same frames, a multipart, an impersonation, then a flood
        w = ctx.socket(zmq.DEALER)
        w.setsockopt(zmq.LINGER, 0)
        w.connect(f"ipc://{st0['ipc_dir']}/workers.sock")
        for frame in PATHOLOGICAL:
            w.send(frame)
        w.send_multipart([b"a", b"b"])
        sweeper = next(x for x in st0["workers"] if x["role"] == "sweeper")
        w.send(b'{"v":1,"type":"hello","role":"sweeper","id":%d,"pid":%d}'
               % (sweeper["id"], sweeper["pid"]))  # someone else's slot and pid
        w.send(b'{"v":1,"type":"hello","role":"mutator","id":0,"pid":%d}' % os.getpid())
        w.send(b'{"v":1,"type":"swept","cycle":1,"stats":{}}')  # never said hello
        for _ in range(20_000):
            w.send(b'{"v":1,"type":"heartbeat","stats":{"role":"sweeper"}}')
        # and clients flooding the control socket from several threads
        errors: list[str] = []

        def client() -> None:
            for _ in range(300):
                try:
                    r = d.request(b'{"v":1,"type":"ping"}', timeout=20)
                    if not r.get("pong"):
                        errors.append(str(r))
                except Exception as e:  # recorded, asserted below
                    errors.append(repr(e))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        c = d.status()["cycle"]
        st = d.wait_for(lambda s: s["cycle"] >= c + 3, what="3 more cycles")
        errs = st["control_errors"]
        n = len(PATHOLOGICAL)
        assert sum(errs.values()) >= 2 * n + 20_000
        assert errs.get("unknown_worker", 0) >= 20_000 + 2
        assert errs.get("multipart", 0) >= 1
        assert st["workers_alive"] == 5 and sum(st["deaths"].values()) == 0
        assert st["internal_errors"] == {}
        assert next(x for x in st["workers"] if x["role"] == "sweeper" and
                    x["id"] == sweeper["id"])["pid"] == sweeper["pid"]  # not taken over
        time.sleep(0.2)
        assert d.stop() == 0
    finally:
        ctx.destroy(0)
        d.close()
