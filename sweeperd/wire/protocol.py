"""The control-plane wire protocol: versioned JSON frames, decoded with bounds by construction.

Theory of operation
-------------------
Every message is one zmq frame holding one UTF-8 JSON object with ``"v": 1`` and a ``"type"``.
Each type is a msgspec ``Struct`` (a tagged union on ``type``) whose fields carry their types
and bounds, and :func:`decode` parses straight into the union allowed on that socket: parsing
and validation are one pass, so nothing unbounded is ever built — a value of the wrong type
(an array where a number belongs, ten thousand nested brackets, a 100,000-digit integer, NaN)
is refused at its first byte, an unknown key before its value is parsed, a frame larger than
``MAX_FRAME`` before parsing starts.  :func:`decode` returns the message's Struct (the shell
``match``es on its class) or raises :class:`ProtocolError`, whose ``reason`` is a short fixed
word (the error counter's label) and whose text names the field; nothing else escapes it.
Nothing from a socket is ever unpickled or evaluated.  :func:`encode` sends a Struct (or a
type's name and fields, for clients) and validates it against the same types and bounds.

Two conversations share the format:

* clients -> coordinator (REQ/REP): ``status``, ``gc`` (force a cycle), ``ping``,
  ``scavenge`` (release all free memory now);
* workers <-> coordinator (DEALER/ROUTER): ``hello``, ``heartbeat``, ``swept``, ``marked``,
  ``crashed`` (the traceback of the exception a worker is dying of) from workers; ``sweep``,
  ``mark``, ``resume``, ``stop``, ``release_all`` to them.

Replies carry ``"ok": true`` and their fields, or ``"ok": false``, ``"reason"`` and ``"error"``.

A worker's ``stats`` carry only what the heap's tallies do not (runtime/heap.py): timings,
gauges, waits, checks and histograms, one Struct per role (:class:`MutatorStats`,
:class:`SweeperStats`, :class:`ScavengerStats`, tagged ``"role"``), each field typed and
bounded, the mutator's histogram a fixed-length array and the scavenger's policy figures a
nested :class:`PolicyFigures`.  They travel unchanged to the coordinator's totals, its
snapshot and the metrics.  What it did to the heap (pages released, spans swept,
objects freed and allocated) is in its row of the tallies, which outlive it; a message dies
with its sender.
"""

from __future__ import annotations

import functools
import json
import operator
from typing import Annotated, Any, Literal

import msgspec

from sweeperd.roles import Role

VERSION = 1
MAX_FRAME = 64 * 1024
MAX_INT = 2**62 - 1
MAX_TRACEBACK = 8192
MAX_THROW = 1024
MAX_FLOAT = 2.0**62  # a float figure's bound, either side
REFILL_BUCKETS = 17  # a mutator's refill histogram: workload/mutator.py's ALLOC_BUCKETS and +Inf

Int = Annotated[int, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)]
Id = Annotated[int, msgspec.Meta(ge=0, le=255)]
Bytes = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_FLOAT)]
Gauge = Annotated[float, msgspec.Meta(ge=-MAX_FLOAT, le=MAX_FLOAT)]
Pid = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


# --- what a worker reports: one Struct per role, tagged with it -------------------------------


class _Stats(msgspec.Struct, tag_field="role", forbid_unknown_fields=True, frozen=True,
             kw_only=True):
    pass


class MutatorStats(_Stats, tag=Role.MUTATOR.value, frozen=True):
    """A mutator's figures since it started (cumulative; ``live_objects`` a gauge): timings in
    seconds, waits, checks and its refill histogram (``refill_buckets[i]``: refills that took
    at most ``ALLOC_BUCKETS[i]``, not cumulative; the last, longer ones)."""

    alloc_seconds: Seconds = 0.0
    oom_waits: Count = 0
    payload_errors: Count = 0
    lost_objects: Count = 0
    objects_checked: Count = 0
    live_objects: Count = 0
    finalizers_set: Count = 0
    marks: Count = 0
    marked_bytes: Bytes = 0  # bytes of the objects its last mark marked
    mark_seconds: Seconds = 0.0
    refills: Count = 0
    refill_seconds: Seconds = 0.0
    refill_buckets: Annotated[tuple[Count, ...], msgspec.Meta(
        min_length=REFILL_BUCKETS, max_length=REFILL_BUCKETS)] = (0,) * REFILL_BUCKETS


class SweeperStats(_Stats, tag=Role.SWEEPER.value, frozen=True):
    """A sweeper's figures: the time of its last cycle's sweep (0 in a heartbeat)."""

    seconds: Seconds = 0.0


class PolicyFigures(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True,
                    omit_defaults=True):
    """The gauges of the scavenger's policy (pacing/*.py ``figures()``); None: not its
    policy's.  Each is exported as ``sweeperd_scavenge_policy_<name>``."""

    decay_npages_limit: Gauge | None = None  # jemalloc-decay
    release_rate_counter_pages: Gauge | None = None  # gperftools-rate
    purge_delay_expired_pages: Gauge | None = None  # mimalloc-delay
    hugepage_kept_bytes: Gauge | None = None  # hugepage-aware
    hpa_ndirty_max_pages: Gauge | None = None  # jemalloc-hpa
    tcmalloc_release_credit_bytes: Gauge | None = None  # tcmalloc-background

    def items(self) -> list[tuple[str, float]]:
        """(name, value) of the figures its policy has, by name."""
        return sorted((k, v) for k, v in msgspec.structs.asdict(self).items() if v is not None)


class ScavengerStats(_Stats, tag=Role.SCAVENGER.value, frozen=True):
    """The scavenger's gauges, as they are now."""

    sleep_ratio: Gauge = 0.0
    vectored: bool = False
    policy: PolicyFigures = PolicyFigures()


WorkerStats = MutatorStats | SweeperStats | ScavengerStats
STATS_OF: dict[Role, type[_Stats]] = {
    Role.MUTATOR: MutatorStats, Role.SWEEPER: SweeperStats, Role.SCAVENGER: ScavengerStats}


# --- messages ---------------------------------------------------------------------------------


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    # required on the wire; UNSET only in a Struct built to send (encode sets it)
    v: Literal[1] | msgspec.UnsetType = msgspec.UNSET


class StatusMsg(_Msg, tag="status"):
    pass


class GcMsg(_Msg, tag="gc"):
    pass


class PingMsg(_Msg, tag="ping"):
    pass


class ScavengeMsg(_Msg, tag="scavenge"):  # release every free page now (debug.FreeOSMemory)
    pass


class HelloMsg(_Msg, tag="hello"):
    role: Role
    id: Id
    pid: Pid


class HeartbeatMsg(_Msg, tag="heartbeat"):
    stats: WorkerStats  # of the sender's role


class SweptMsg(_Msg, tag="swept"):
    cycle: Int
    stats: SweeperStats


class MarkedMsg(_Msg, tag="marked"):
    cycle: Int
    stats: MutatorStats
    marked_bytes: Bytes  # bytes of the objects this mutator marked live


class CrashedMsg(_Msg, tag="crashed"):  # a worker dying of an exception: its traceback
    traceback: Annotated[str, msgspec.Meta(max_length=MAX_TRACEBACK)]
    # the broken heap invariant's message (Go's wording first) if it died of a Throw: one
    # process of the runtime throwing ends the whole runtime, as a throw in Go ends the program
    throw: Annotated[str, msgspec.Meta(max_length=MAX_THROW)] = ""


class SweepMsg(_Msg, tag="sweep"):
    cycle: Int


class MarkMsg(_Msg, tag="mark"):
    cycle: Int


class ResumeMsg(_Msg, tag="resume"):
    cycle: Int
    sweep_pages_per_byte: Annotated[float, msgspec.Meta(ge=0)]
    scenario_t0: Annotated[float, msgspec.Meta(ge=0)] | None = None  # when the scenario began


class StopMsg(_Msg, tag="stop"):
    pass


class ReleaseAllMsg(_Msg, tag="release_all"):
    pass


ClientMsg = StatusMsg | GcMsg | PingMsg | ScavengeMsg
WorkerMsg = HelloMsg | HeartbeatMsg | SweptMsg | MarkedMsg | CrashedMsg
CoordinatorMsg = SweepMsg | MarkMsg | ResumeMsg | StopMsg | ReleaseAllMsg

TYPES: dict[str, type[_Msg]] = {
    str(cls.__struct_config__.tag): cls
    for cls in (StatusMsg, GcMsg, PingMsg, ScavengeMsg, HelloMsg, HeartbeatMsg, SweptMsg,
                MarkedMsg, CrashedMsg, SweepMsg, MarkMsg, ResumeMsg, StopMsg, ReleaseAllMsg)}
CLIENT_TYPES = frozenset({"status", "gc", "ping", "scavenge"})
FROM_WORKER = frozenset({"hello", "heartbeat", "swept", "marked", "crashed"})
TO_WORKER = frozenset({"sweep", "mark", "resume", "stop", "release_all"})


def stats_role(stats: WorkerStats) -> Role:
    """The role whose figures ``stats`` are."""
    return Role(str(stats.__struct_config__.tag))


def kind(msg: _Msg) -> str:
    """A message's type, as on the wire (``"status"``, ``"swept"`` ...)."""
    return str(msg.__struct_config__.tag)


class ProtocolError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@functools.cache
def _decoder(allowed: frozenset[str]) -> msgspec.json.Decoder[Any]:
    classes: list[Any] = [TYPES[t] for t in sorted(allowed)]
    return msgspec.json.Decoder(functools.reduce(operator.or_, classes))


def _reason(e: msgspec.ValidationError, allowed: frozenset[str]) -> ProtocolError:
    text = str(e)
    if text.startswith("Expected `object`") and "- at `" not in text:
        return ProtocolError("not_object", "a message must be a JSON object")
    if text.endswith("at `$.v`") or text == "Object missing required field `v`":
        return ProtocolError("bad_version", f"{text}; this daemon speaks version {VERSION}")
    if text.endswith("at `$.type`") or text == "Object missing required field `type`":
        return ProtocolError("unknown_type", f"{text}; known: {sorted(allowed)}")
    return ProtocolError("bad_field", text)


def decode(frame: bytes, allowed: frozenset[str] | set[str] | None = None) -> Any:
    """Parse and validate one frame into its message Struct (one of the ``allowed`` types;
    all of them if None); only :class:`ProtocolError` escapes."""
    if len(frame) > MAX_FRAME:
        raise ProtocolError("oversized", f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    ok = frozenset(TYPES) if allowed is None else frozenset(allowed)
    try:
        msg = _decoder(ok).decode(frame)
    except msgspec.ValidationError as e:
        raise _reason(e, ok) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as e:
        raise ProtocolError("not_json", f"frame is not UTF-8 JSON ({e})"[:200]) from None
    if msg.v is msgspec.UNSET:
        raise ProtocolError("bad_version", "Object missing required field `v`; this daemon "
                            f"speaks version {VERSION}")
    return msg


def encode(msg: _Msg | str, **fields: Any) -> bytes:
    """The frame of ``msg`` (a message Struct, or a type's name and its fields); refuses
    (ProtocolError) what :func:`decode` would: a Struct is checked against its bounds."""
    if isinstance(msg, str):
        cls = TYPES.get(msg)
        if cls is None:
            raise ProtocolError("unknown_type", f"unknown message type {msg!r}")
        try:
            msg = msgspec.convert({"v": VERSION, **fields}, type=cls)
        except msgspec.ValidationError as e:
            raise _reason(e, frozenset(TYPES)) from None
        return msgspec.json.encode(msg)
    if fields:
        raise TypeError("encode: fields go in the Struct")
    frame = msgspec.json.encode(msgspec.structs.replace(msg, v=VERSION))
    decode(frame, frozenset({kind(msg)}))  # its bounds, as a peer would check them
    return frame


def reply(ok: bool = True, **fields: Any) -> bytes:
    """A reply frame (replies are not requests: no type, just ok and fields)."""
    return json.dumps({"v": VERSION, "ok": ok, **fields}, separators=(",", ":")).encode()


def error_reply(e: ProtocolError) -> bytes:
    return reply(False, error=str(e), reason=e.reason)
