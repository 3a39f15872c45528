import json

import pytest

from sweeperd.wire import protocol as p


def test_round_trip():
    m = p.decode(p.encode("swept", cycle=3, stats={"spans": 10, "seconds": 0.5}))
    assert m.type == "swept" and m["cycle"] == 3 and m["stats"]["spans"] == 10


@pytest.mark.parametrize("frame,reason", [
    (b"\xff\xfe garbage", "not_json"),
    (b"[1,2]", "not_object"),
    (b'{"type":"status"}', "bad_version"),
    (b'{"v":2,"type":"status"}', "bad_version"),
    (b'{"v":1,"type":"explode"}', "unknown_type"),
    (b'{"v":1}', "unknown_type"),
    (b'{"v":1,"type":"sweep","cycle":"3"}', "bad_field"),
    (b'{"v":1,"type":"sweep","cycle":true}', "bad_field"),
    (b'{"v":1,"type":"sweep"}', "bad_field"),
    (b'{"v":1,"type":"status","x":1}', "bad_field"),
    (b'{"v":1,"type":"heartbeat","stats":{"a":"b"}}', "bad_field"),
    (b'{"v":1,"type":"hello","role":"root","id":1,"pid":2}', "bad_field"),
    (b'{"v":1,"type":"resume","cycle":1,"sweep_pages_per_byte":NaN}', "bad_field"),
    (b"{" + b" " * (p.MAX_FRAME + 1) + b"}", "oversized"),
])
def test_bad_frames_are_refused_by_reason(frame, reason):
    with pytest.raises(p.ProtocolError) as e:
        p.decode(frame)
    assert e.value.reason == reason
    r = json.loads(p.error_reply(e.value))
    assert r["ok"] is False and r["reason"] == reason and r["error"]


def test_clients_may_not_send_worker_messages():
    with pytest.raises(p.ProtocolError, match="unknown message type 'stop'"):
        p.decode(p.encode("stop"), allowed=p.CLIENT_TYPES)


def test_encode_refuses_what_decode_would():
    with pytest.raises(p.ProtocolError):
        p.encode("sweep", cycle="x")
