import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    (b'{"v":1,"type":"resume","cycle":1,"sweep_pages_per_byte":NaN}', "not_json"),
    (b'{"v":1,"type":"resume","cycle":1,"sweep_pages_per_byte":1e400}', "bad_field"),
    (b'{"v":1,"type":"sweep","cycle":' + b"9" * 4301 + b"}", "bad_field"),
    (b"[" * 5000, "not_object"),
    (b'{"v":1,"type":"status","x":' + b"[" * 5000 + b"]" * 5000 + b"}", "bad_field"),
    (b"{" + b" " * (p.MAX_FRAME + 1) + b"}", "oversized"),
])
def test_bad_frames_are_refused_by_reason(frame, reason):
    with pytest.raises(p.ProtocolError) as e:
        p.decode(frame)
    assert e.value.reason == reason
    r = json.loads(p.error_reply(e.value))
    assert r["ok"] is False and r["reason"] == reason and r["error"]


def test_clients_may_not_send_worker_messages():
    with pytest.raises(p.ProtocolError, match="Invalid value 'stop'"):
        p.decode(p.encode("stop"), allowed=p.CLIENT_TYPES)


def test_encode_refuses_what_decode_would():
    with pytest.raises(p.ProtocolError):
        p.encode("sweep", cycle="x")


# --- fuzz: whatever a peer sends, only ProtocolError escapes, and valid frames round-trip ---

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**40), max_value=10**40), st.text(max_size=20))
_json = st.recursive(_json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=30)


def _nested(depth: int, kind: str) -> bytes:
    return (b"[" * depth + b"]" * depth) if kind == "list" else (
        b'{"a":' * depth + b"1" + b"}" * depth)


@st.composite
def _pathological(draw) -> bytes:
    base = draw(st.sampled_from(sorted(p.TYPES)))
    field = draw(st.sampled_from(["cycle", "stats", "id", "pid", "role", "v", "type", "x",
                                  "sweep_pages_per_byte"]))
    value = draw(st.one_of(
        st.builds(_nested, st.integers(1, 20_000), st.sampled_from(["list", "dict"])),
        st.integers(1, 50_000).map(lambda n: b"9" * n),
        st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"true",
                         b'"\\ud800"', b"null", b"{}", b"[]", b'""']),
        st.integers(0, 70).map(lambda n: b"{" + b",".join(
            b'"k%d":1' % i for i in range(n)) + b"}"),
    ))
    head = b'{"v":1,"type":"%s",' % base.encode()
    if draw(st.booleans()):  # a duplicate key
        head += b'"type":"%s",' % draw(st.sampled_from(sorted(p.TYPES))).encode()
    return head + b'"%s":' % field.encode() + value + b"}"


@settings(max_examples=300, deadline=None)
@given(frame=st.one_of(st.binary(max_size=300), _json.map(lambda o: json.dumps(o).encode()),
                       _pathological()),
       allowed=st.sampled_from([None, p.CLIENT_TYPES, p.FROM_WORKER, p.TO_WORKER]))
def test_any_frame_decodes_or_raises_only_protocol_error(frame, allowed):
    try:
        m = p.decode(frame, allowed)
    except p.ProtocolError as e:
        assert e.reason in {"not_json", "not_object", "bad_version", "unknown_type",
                            "bad_field", "oversized"}
        return
    assert allowed is None or m.type in allowed
    assert p.decode(p.encode(m.type, **m.fields)) == m  # what was accepted re-encodes


@given(cycle=st.integers(-(2**62) + 1, 2**62 - 1),
       stats=st.dictionaries(st.text(max_size=64), st.floats(allow_nan=False,
                             allow_infinity=False), max_size=64))
def test_valid_messages_round_trip(cycle, stats):
    m = p.decode(p.encode("swept", cycle=cycle, stats=stats))
    assert m["cycle"] == cycle and m["stats"] == stats
