"""The control-plane wire protocol: versioned JSON frames, decoded with bounds by construction.

Theory of operation
-------------------
Every message is one zmq frame holding one UTF-8 JSON object with ``"v": 1`` and a ``"type"``.
Each type is a msgspec ``Struct`` (a tagged union on ``type``) whose fields carry their types
and bounds, and :func:`decode` parses straight into the union allowed on that socket: parsing
and validation are one pass, so nothing unbounded is ever built — a value of the wrong type
(an array where a number belongs, ten thousand nested brackets, a 100,000-digit integer, NaN)
is refused at its first byte, an unknown key before its value is parsed, a frame larger than
``MAX_FRAME`` before parsing starts.  :func:`decode` returns a :class:`Message` or raises
:class:`ProtocolError`, whose ``reason`` is a short fixed word (the error counter's label) and
whose text names the field; nothing else escapes it.  Nothing from a socket is ever unpickled
or evaluated.  :func:`encode` validates what it sends against the same types.

Two conversations share the format:

* clients -> coordinator (REQ/REP): ``status``, ``gc`` (force a cycle), ``ping``,
  ``scavenge`` (release all free memory now);
* workers <-> coordinator (DEALER/ROUTER): ``hello``, ``heartbeat``, ``swept``, ``marked``,
  ``crashed`` (the traceback of the exception a worker is dying of) from workers; ``sweep``,
  ``mark``, ``resume``, ``stop``, ``release_all`` to them.

Replies carry ``"ok": true`` and their fields, or ``"ok": false``, ``"reason"`` and ``"error"``.

A worker's ``stats`` carry only what the heap's tallies do not (runtime/heap.py): timings,
gauges, waits, checks and histograms.  What it did to the heap (pages released, spans swept,
objects freed and allocated) is in its row of the tallies, which outlive it; a message dies
with its sender.
"""

from __future__ import annotations

import functools
import json
import operator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from sweeperd.roles import Role

VERSION = 1
MAX_FRAME = 64 * 1024
MAX_STATS = 64
MAX_INT = 2**62 - 1
MAX_TRACEBACK = 8192

Int = Annotated[int, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)]
Id = Annotated[int, msgspec.Meta(ge=0, le=255)]
Bytes = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
Pid = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Stats = Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], float],
                  msgspec.Meta(max_length=MAX_STATS)]


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=True):
    v: Literal[1]


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
    stats: Stats


class SweptMsg(_Msg, tag="swept"):
    cycle: Int
    stats: Stats


class MarkedMsg(_Msg, tag="marked"):
    cycle: Int
    stats: Stats
    marked_bytes: Bytes  # bytes of the objects this mutator marked live


class CrashedMsg(_Msg, tag="crashed"):  # a worker dying of an exception: its traceback
    traceback: Annotated[str, msgspec.Meta(max_length=MAX_TRACEBACK)]


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


TYPES: dict[str, type[_Msg]] = {
    str(cls.__struct_config__.tag): cls
    for cls in (StatusMsg, GcMsg, PingMsg, ScavengeMsg, HelloMsg, HeartbeatMsg, SweptMsg,
                MarkedMsg, CrashedMsg, SweepMsg, MarkMsg, ResumeMsg, StopMsg, ReleaseAllMsg)}
CLIENT_TYPES = frozenset({"status", "gc", "ping", "scavenge"})
FROM_WORKER = frozenset({"hello", "heartbeat", "swept", "marked", "crashed"})
TO_WORKER = frozenset({"sweep", "mark", "resume", "stop", "release_all"})


class ProtocolError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Message:
    type: str
    fields: dict[str, Any]

    def __getitem__(self, k: str) -> Any:
        return self.fields[k]


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


def decode(frame: bytes, allowed: frozenset[str] | set[str] | None = None) -> Message:
    """Parse and validate one frame; only :class:`ProtocolError` escapes."""
    if len(frame) > MAX_FRAME:
        raise ProtocolError("oversized", f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    ok = frozenset(TYPES) if allowed is None else frozenset(allowed)
    try:
        msg = _decoder(ok).decode(frame)
    except msgspec.ValidationError as e:
        raise _reason(e, ok) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as e:
        raise ProtocolError("not_json", f"frame is not UTF-8 JSON ({e})"[:200]) from None
    return Message(str(msg.__struct_config__.tag), msgspec.structs.asdict(msg))


def encode(mtype: str, **fields: Any) -> bytes:
    """A frame of type ``mtype``; refuses (ProtocolError) what :func:`decode` would."""
    cls = TYPES.get(mtype)
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {mtype!r}")
    try:
        msg = msgspec.convert({"v": VERSION, **fields}, type=cls)
    except msgspec.ValidationError as e:
        raise _reason(e, frozenset(TYPES)) from None
    return msgspec.json.encode(msg)


def reply(ok: bool = True, **fields: Any) -> bytes:
    """A reply frame (replies are not requests: no type, just ok and fields)."""
    return json.dumps({"v": VERSION, "ok": ok, **fields}, separators=(",", ":")).encode()


def error_reply(e: ProtocolError) -> bytes:
    return reply(False, error=str(e), reason=e.reason)
