import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.pacing import policies
from sweeperd.pacing.names import POLICIES
from sweeperd.wire import protocol as p


def test_round_trip():
    m = p.decode(p.encode(p.SweptMsg(cycle=3, stats=p.SweeperStats(seconds=0.5))))
    assert m == p.SweptMsg(v=1, cycle=3, stats=p.SweeperStats(seconds=0.5))
    assert p.decode(p.encode("status")) == p.StatusMsg(v=1)  # (a client's: name and fields)


def test_a_heartbeat_carries_the_stats_of_one_role_tagged_with_it():
    figures = p.PolicyFigures(decay_npages_limit=12.0)
    for stats in (p.MutatorStats(oom_waits=2, refill_buckets=(1,) * p.REFILL_BUCKETS),
                  p.SweeperStats(), p.ScavengerStats(sleep_ratio=0.5, policy=figures)):
        m = p.decode(p.encode(p.HeartbeatMsg(stats=stats)), p.FROM_WORKER)
        assert isinstance(m, p.HeartbeatMsg) and m.stats == stats
        assert p.stats_role(m.stats) is p.stats_role(stats)
    assert p.stats_role(p.SweeperStats()) is p.Role.SWEEPER
    assert figures.items() == [("decay_npages_limit", 12.0)]


def test_the_refill_histogram_has_one_bucket_per_bound_and_inf():
    from sweeperd.workload.mutator import ALLOC_BUCKETS

    assert len(ALLOC_BUCKETS) + 1 == p.REFILL_BUCKETS


@pytest.mark.parametrize("stats", [
    b'{"role":"mutator","refill_buckets":[1,2]}',  # too few buckets
    b'{"role":"mutator","refill_buckets":[' + b"1," * 17 + b'1]}',  # too many
    b'{"role":"mutator","oom_waits":-1}',
    b'{"role":"mutator","oom_waits":1.5}',
    b'{"role":"mutator","refill_seconds":1e300}',
    b'{"role":"mutator","policy_x":1}',  # a prefixed figure: no such field
    b'{"role":"scavenger","policy":{"x":1}}',  # a figure no policy has
    b'{"role":"scavenger","policy":[]}',
    b'{"role":"root"}',
    b'{}',  # whose?
])
def test_stats_out_of_bounds_or_untagged_are_bad_fields(stats):
    with pytest.raises(p.ProtocolError) as e:
        p.decode(b'{"v":1,"type":"heartbeat","stats":' + stats + b"}")
    assert e.value.reason == "bad_field"


@pytest.mark.parametrize("frame", [
    b'{"v":1,"type":"swept","cycle":1,"stats":{"role":"mutator"}}',
    b'{"v":1,"type":"marked","cycle":1,"marked_bytes":0,"stats":{"role":"sweeper"}}',
])
def test_a_report_with_another_roles_stats_is_a_bad_field(frame):
    with pytest.raises(p.ProtocolError) as e:
        p.decode(frame, p.FROM_WORKER)
    assert e.value.reason == "bad_field"


def test_encode_checks_a_structs_bounds():
    with pytest.raises(p.ProtocolError) as e:
        p.encode(p.SweepMsg(cycle=2**63))
    assert e.value.reason == "bad_field"
    with pytest.raises(p.ProtocolError):
        p.encode(p.HeartbeatMsg(stats=p.MutatorStats(refill_buckets=(1, 2))))
    with pytest.raises(p.ProtocolError):
        p.encode(p.SweptMsg(cycle=1, stats=p.SweeperStats(seconds=float("nan"))))


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
    (b'{"v":1,"type":"heartbeat","stats":{"role":"sweeper","seconds":"b"}}', "bad_field"),
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
    assert allowed is None or p.kind(m) in allowed
    assert p.decode(p.encode(m)) == m  # what was accepted re-encodes


_count = st.integers(0, p.MAX_INT)
_secs = st.floats(0, p.MAX_FLOAT)
_mutator_stats = st.builds(
    p.MutatorStats, alloc_seconds=_secs, oom_waits=_count, lost_objects=_count,
    marked_bytes=_count, mark_seconds=_secs, refills=_count, refill_seconds=_secs,
    refill_buckets=st.lists(_count, min_size=p.REFILL_BUCKETS,
                            max_size=p.REFILL_BUCKETS).map(tuple))
_scavenger_stats = st.builds(
    p.ScavengerStats, sleep_ratio=st.floats(-p.MAX_FLOAT, p.MAX_FLOAT),
    vectored=st.booleans(), policy=st.builds(
        p.PolicyFigures, decay_npages_limit=st.none() | _secs,
        hugepage_kept_bytes=st.none() | _secs))


@given(cycle=st.integers(-(2**62) + 1, 2**62 - 1), seconds=_secs,
       stats=st.one_of(_mutator_stats, _scavenger_stats, st.builds(p.SweeperStats,
                                                                   seconds=_secs)))
def test_valid_messages_round_trip(cycle, seconds, stats):
    m = p.decode(p.encode(p.SweptMsg(cycle=cycle, stats=p.SweeperStats(seconds=seconds))))
    assert m.cycle == cycle and m.stats.seconds == seconds
    assert p.decode(p.encode(p.HeartbeatMsg(stats=stats))).stats == stats


@pytest.mark.parametrize("name", POLICIES)
def test_every_policys_figures_fit_the_wires_policy_figures(name):
    """The scavenger sends ``PolicyFigures(**policy.figures())``: every figure a policy has
    is a field there (or the scavenger would die at its first heartbeat)."""
    figures = policies.make(name).figures()
    sent = p.PolicyFigures(**{k: float(v) for k, v in figures.items()})
    got = p.decode(p.encode(p.HeartbeatMsg(stats=p.ScavengerStats(policy=sent)))).stats.policy
    assert dict(got.items()) == {k: float(v) for k, v in figures.items()}
