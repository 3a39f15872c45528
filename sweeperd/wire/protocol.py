"""The control-plane wire protocol: versioned JSON frames, validated before anything acts.

Theory of operation
-------------------
Every message is one zmq frame holding one UTF-8 JSON object with ``"v": 1`` and a ``"type"``.
:func:`decode` turns bytes into a :class:`Message` or raises :class:`ProtocolError` whose
``reason`` is a short fixed word (for the error counter's label) and whose text says what is
wrong.  Nothing from a socket is ever unpickled or evaluated; a frame larger than
``MAX_FRAME`` is refused before it is parsed.  :func:`encode` is its inverse and validates too,
so a process can only send what a peer would accept.

Two conversations share the format:

* clients -> coordinator (REQ/REP): ``status``, ``gc`` (force a cycle), ``ping``,
  ``scavenge`` (release all free memory now);
* workers <-> coordinator (DEALER/ROUTER): ``hello``, ``heartbeat``, ``swept``, ``marked``
  from workers; ``sweep``, ``mark``, ``resume``, ``stop``, ``release_all`` to them.

Replies carry ``"ok": true`` and their fields, or ``"ok": false`` and ``"error"``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_FRAME = 64 * 1024

CLIENT_TYPES = {"status", "gc", "ping", "scavenge"}

# type -> {field: kind}; kinds: int, num, str, stats (flat {str: number}), role
SCHEMA: dict[str, dict[str, str]] = {
    "status": {},
    "gc": {},
    "ping": {},
    "scavenge": {},  # release every free page now (Go's debug.FreeOSMemory)
    "hello": {"role": "role", "id": "int", "pid": "int"},
    "heartbeat": {"stats": "stats"},
    "swept": {"cycle": "int", "stats": "stats"},
    "marked": {"cycle": "int", "stats": "stats"},
    "sweep": {"cycle": "int"},
    "mark": {"cycle": "int"},
    "resume": {"cycle": "int", "sweep_pages_per_byte": "num"},
    "stop": {},
    "release_all": {},
}
ROLES = {"sweeper", "mutator", "scavenger"}
MAX_STATS = 64


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


def _check_field(mtype: str, name: str, kind: str, v: Any) -> Any:
    where = f"{mtype}.{name}"
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int) or not -(2**62) < v < 2**62:
            raise ProtocolError("bad_field", f"{where} must be an integer, got {v!r:.40}")
    elif kind == "num":
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ProtocolError("bad_field", f"{where} must be a finite number, got {v!r:.40}")
    elif kind == "role":
        if v not in ROLES:
            raise ProtocolError("bad_field", f"{where} must be one of {sorted(ROLES)}")
    elif kind == "stats":
        if not isinstance(v, dict) or len(v) > MAX_STATS:
            raise ProtocolError("bad_field", f"{where} must be an object of at most "
                                f"{MAX_STATS} numbers")
        for k, x in v.items():
            if (not isinstance(k, str) or len(k) > 64 or isinstance(x, bool)
                    or not isinstance(x, int | float) or not math.isfinite(x)):
                raise ProtocolError("bad_field", f"{where}[{k!r:.40}] must be a number")
    return v


def validate(obj: Any, allowed: set[str] | None = None) -> Message:
    if not isinstance(obj, dict):
        raise ProtocolError("not_object", "a message must be a JSON object")
    v = obj.get("v")
    if v != VERSION:
        raise ProtocolError("bad_version", f"unsupported protocol version {v!r:.20}; "
                            f"this daemon speaks {VERSION}")
    t = obj.get("type")
    if not isinstance(t, str) or t not in SCHEMA or (allowed is not None and t not in allowed):
        known = sorted(allowed if allowed is not None else SCHEMA)
        raise ProtocolError("unknown_type", f"unknown message type {t!r:.40}; known: {known}")
    spec = SCHEMA[t]
    extra = set(obj) - set(spec) - {"v", "type"}
    if extra:
        raise ProtocolError("bad_field", f"{t}: unknown field(s) {sorted(extra)[:5]}")
    out = {}
    for name, kind in spec.items():
        if name not in obj:
            raise ProtocolError("bad_field", f"{t}: missing field {name}")
        out[name] = _check_field(t, name, kind, obj[name])
    return Message(t, out)


def decode(frame: bytes, allowed: set[str] | None = None) -> Message:
    if len(frame) > MAX_FRAME:
        raise ProtocolError("oversized", f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    try:
        obj = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError("not_json", f"frame is not UTF-8 JSON ({e.__class__.__name__})") \
            from None
    return validate(obj, allowed)


def encode(mtype: str, **fields: Any) -> bytes:
    obj = {"v": VERSION, "type": mtype, **fields}
    validate(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def reply(ok: bool = True, **fields: Any) -> bytes:
    """A reply frame (replies are not requests: no type, just ok and fields)."""
    return json.dumps({"v": VERSION, "ok": ok, **fields}, separators=(",", ":")).encode()


def error_reply(e: ProtocolError) -> bytes:
    return reply(False, error=str(e), reason=e.reason)
