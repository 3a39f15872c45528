"""Scenarios: workloads that change over time, as a sequence of phases.

Theory of operation
-------------------
A scenario is a TOML file: a ``[scenario]`` table (name, description, the heap it is sized
for, and optionally GOGC and a memory limit) and one ``[[phase]]`` table per phase.  A phase
lasts ``seconds`` and sets, for all mutators together:

* ``live_mib``: the live heap the mutators hold — a number (a level) or ``[from, to]`` (a
  linear ramp over the phase);
* ``garbage_mib_s``: bytes allocated per second that die at the next GC, or ``"max"`` (as
  fast as the mutators can: they then pay sweep debt and sweep on demand);
* ``size_classes``: Go size classes, mixed uniformly;
* ``long_lived_every``: every Nth object allocated is pinned for the rest of the run (0: none)
  — scattered survivors that keep spans from emptying, the fragmentation lifetime model;
* ``finalizer_fraction``, ``large_fraction``.

:class:`Schedule` answers "what should the mutators hold and allocate at time t" as a pure
function of the time since the scenario started (time is passed in); each mutator follows its
``share`` of it (the coordinator gives each of N mutators 1/N).  After the last phase the
schedule holds the last phase's end state.

Decoding is msgspec's, typed and bounded: a wrong type, NaN, an out-of-range or unknown key
is a :class:`ScenarioError` naming the file and the field (``$.phase[2].seconds``).  A
scenario whose peak live heap does not fit its heap is refused before anything starts.

Invariants: phases are non-empty and each lasts > 0 s; every MiB figure is finite and >= 0;
``Schedule.at`` is total for every t (negative t is the start, t past the end the end).
"""

from __future__ import annotations

import bisect
import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from sweeperd.runtime.sizeclasses import NUM_CLASSES

MIB = 1 << 20
MAX_PHASES = 1000
MAX_MIB = float(1 << 24)  # 16 TiB: any larger figure is a typo
MAX_FILE_BYTES = 1 << 20

Mib = Annotated[float, msgspec.Meta(ge=0, le=MAX_MIB)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
SizeClass = Annotated[int, msgspec.Meta(ge=1, le=NUM_CLASSES - 1)]


class ScenarioError(ValueError):
    """A scenario that cannot run; the text names the file and the field."""


class Phase(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    seconds: Seconds
    live_mib: Mib | Annotated[list[Mib], msgspec.Meta(min_length=2, max_length=2)]
    garbage_mib_s: Mib | Literal["max"] = 0.0
    name: Annotated[str, msgspec.Meta(max_length=64)] = ""
    size_classes: Annotated[tuple[SizeClass, ...], msgspec.Meta(min_length=1, max_length=67)] = (
        2, 6, 20, 45)
    long_lived_every: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 0
    finalizer_fraction: Fraction = 0.0
    large_fraction: Fraction = 0.0

    @property
    def live_from(self) -> float:
        return self.live_mib[0] if isinstance(self.live_mib, list) else self.live_mib

    @property
    def live_to(self) -> float:
        return self.live_mib[1] if isinstance(self.live_mib, list) else self.live_mib

    def scaled(self, k: float) -> Phase:
        g = self.garbage_mib_s if self.garbage_mib_s == "max" else self.garbage_mib_s * k
        live = [self.live_from * k, self.live_to * k]
        return msgspec.structs.replace(self, live_mib=live if live[0] != live[1] else live[0],
                                       garbage_mib_s=g)


class Header(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    heap_mib: Annotated[int, msgspec.Meta(ge=1, le=16384)] = 2048
    # 10..1000, or GOGC off: "off" or -1 (kept as written; pacing/gcpace.gogc_percent reads it)
    gogc: Annotated[int, msgspec.Meta(ge=-1, le=1000)] | Literal["off"] = 100

    def __post_init__(self) -> None:
        if isinstance(self.gogc, int) and 0 <= self.gogc < 10:
            raise ValueError(f'gogc must be 10..1000, or "off" (-1), got {self.gogc}')
    # MiB, 0 none; "cgroup": the memory cgroup's limit less the daemon's own (sys/cgroup.py)
    memory_limit_mib: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] | Literal["cgroup"] = 0


class Scenario(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    scenario: Header
    phase: Annotated[tuple[Phase, ...], msgspec.Meta(min_length=1, max_length=MAX_PHASES)]

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phase)

    @property
    def peak_live_mib(self) -> float:
        return max(max(p.live_from, p.live_to) for p in self.phase)

    def asked_bytes(self, t0: float, t1: float) -> float | None:
        """Bytes the schedule asks the mutators to allocate over ``[t0, t1]`` (s from the
        start): every phase's garbage, its live heap's growth (a ramp's, pro rata), and a rise
        at a phase boundary (from 0 at the start) when it falls in ``[t0, t1)``.  A fall frees
        and asks nothing.  None when a phase in the window asks for ``"max"`` (no figure)."""
        assert t0 <= t1, f"asked_bytes: t0 {t0} > t1 {t1}"
        total, start, prev = 0.0, 0.0, 0.0
        for p in self.phase:
            end = start + p.seconds
            if t0 <= start < t1:
                total += max(0.0, p.live_from - prev)
            a, b = max(t0, start), min(t1, end)
            if b > a:
                if p.garbage_mib_s == "max":
                    return None
                total += (p.garbage_mib_s + max(0.0, p.live_to - p.live_from) / p.seconds) \
                    * (b - a)
            start, prev = end, p.live_to
        return total * MIB

    def last_drop(self) -> float | None:
        """When the live heap last fell at a phase boundary (s from the start), None if never."""
        t, prev, when = 0.0, None, None
        for p in self.phase:
            if prev is not None and p.live_from < prev:
                when = t
            t += p.seconds
            prev = p.live_to
        return when

    def scaled(self, scale: float = 1.0, heap_mib: int | None = None) -> Scenario:
        """Every MiB figure times ``scale``; the heap ``heap_mib`` (default: scaled too)."""
        if not (math.isfinite(scale) and 0 < scale <= 1000):
            raise ScenarioError(f"--scale must be a number in (0, 1000], got {scale}")
        h = self.scenario
        heap = heap_mib if heap_mib is not None else max(1, round(h.heap_mib * scale))
        lim = h.memory_limit_mib  # "cgroup" is the host's figure: not scaled
        head = msgspec.structs.replace(
            h, heap_mib=heap,  # a limit scaled stays a limit (at least 1 MiB), none stays none
            memory_limit_mib=lim if isinstance(lim, str) or not lim else max(1, round(lim * scale)))
        out = Scenario(head, tuple(p.scaled(scale) for p in self.phase))
        out.check()
        return out

    def check(self, where: str | None = None) -> None:
        """The scenario fits its heap: the peak live heap at most 90% of it; GOGC off comes
        with a memory limit (without one Go's GC would never run: pacing/gcpace.py).
        :class:`ScenarioError` naming ``where`` (default ``scenario <name>``)."""
        h = self.scenario
        where = where or f"scenario {self.name}"
        if h.gogc in ("off", -1) and h.memory_limit_mib == 0:
            raise ScenarioError(
                f'{where}: gogc = {_toml(h.gogc)} needs memory_limit_mib > 0 (or '
                '"cgroup") in [scenario]: with GOGC off the GC runs only as the heap nears '
                "the memory limit, and without one it would never run")
        if self.peak_live_mib > 0.9 * self.scenario.heap_mib:
            raise ScenarioError(
                f"{where}: its peak live heap ({self.peak_live_mib:g} MiB) does not "
                f"fit a {self.scenario.heap_mib} MiB heap (at most 90% of it); raise "
                f"--heap-mib or lower --scale")
        if self.scenario.heap_mib > 16384:
            raise ScenarioError(f"{where}: a {self.scenario.heap_mib} MiB heap is "
                                "larger than sweeperd's 16384 MiB limit")

    def to_toml(self) -> str:
        """The scenario as TOML (what :func:`parse` reads back)."""
        lines = ["[scenario]"]
        for k, v in msgspec.structs.asdict(self.scenario).items():
            lines.append(f"{k} = {_toml(v)}")
        for p in self.phase:
            lines += ["", "[[phase]]"]
            for k, v in msgspec.structs.asdict(p).items():
                lines.append(f"{k} = {_toml(v)}")
        return "\n".join(lines) + "\n"


def toml_string(s: str) -> str:
    """``s`` as a TOML basic string: quote, backslash and every control character escaped
    (TOML forbids them raw, DEL included, which JSON encoders leave alone)."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml(v: object) -> str:
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def parse(text: str, where: str = "<scenario>") -> Scenario:
    """A scenario from TOML text; :class:`ScenarioError` naming ``where`` and the field."""
    if len(text) > MAX_FILE_BYTES:
        raise ScenarioError(f"{where}: larger than {MAX_FILE_BYTES} bytes")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{where}: not valid TOML: {e}") from None
    except RecursionError:
        raise ScenarioError(f"{where}: not valid TOML: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ScenarioError(f"{where}: not valid TOML: {e}") from None
    try:
        sc = msgspec.convert(data, Scenario)
    except msgspec.ValidationError as e:
        raise ScenarioError(f"{where}: {e}") from None
    except RecursionError:
        raise ScenarioError(f"{where}: nested too deeply") from None
    for i, p in enumerate(sc.phase):
        if any(not math.isfinite(x) for x in (p.live_from, p.live_to)):
            raise ScenarioError(f"{where}: $.phase[{i}].live_mib must be finite")
    sc.check(where if sc.name in where else f"{where}: scenario {sc.name}")
    return sc


def shipped() -> dict[str, str]:
    """The scenarios shipped in ``config/scenarios/``: name -> TOML text."""
    d = resources.files("sweeperd.workload").joinpath("data/scenarios")
    return {f.name.removesuffix(".toml"): f.read_text() for f in d.iterdir()
            if f.name.endswith(".toml")}


def load(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a scenario file by path."""
    ours = shipped()
    if name_or_path in ours:
        return parse(ours[name_or_path], f"scenario {name_or_path}")
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        raise ScenarioError(f"no scenario {name_or_path!r}: not a file, and the shipped "
                            f"scenarios are {', '.join(sorted(ours))}")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        text = raw.decode()
    except OSError as e:
        raise ScenarioError(f"cannot read scenario file {p}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML: not UTF-8 ({e.reason})") from None
    return parse(text, str(p))


@dataclass(frozen=True)
class State:
    """What the mutators together should do at one instant."""

    phase: int
    live_bytes: float  # the live heap to hold
    garbage_bytes_per_s: float  # math.inf: as fast as possible
    size_classes: tuple[int, ...]
    long_lived_every: int
    finalizer_fraction: float
    large_fraction: float


class Schedule:
    """The scenario as a function of time (seconds since it started), for a ``share`` of it."""

    def __init__(self, sc: Scenario, share: float = 1.0) -> None:
        assert 0 < share <= 1, share
        self.sc, self.share = sc, share
        self.ends: list[float] = []
        t = 0.0
        for p in sc.phase:
            t += p.seconds
            self.ends.append(t)

    def at(self, t: float) -> State:
        i = min(bisect.bisect_right(self.ends, t), len(self.ends) - 1)  # first end after t
        p = self.sc.phase[i]
        start = self.ends[i] - p.seconds
        f = min(1.0, max(0.0, (t - start) / p.seconds))
        live = (p.live_from + (p.live_to - p.live_from) * f) * MIB * self.share
        g = math.inf if p.garbage_mib_s == "max" else p.garbage_mib_s * MIB * self.share
        return State(i, live, g, p.size_classes, p.long_lived_every, p.finalizer_fraction,
                     p.large_fraction)
