"""Replay a real Go service: its ``GODEBUG=gctrace=1`` output turned into a scenario.

Theory of operation
-------------------
Go 1.19's gctrace line (``runtime/extern.go``) is::

    gc # @#s #%: #+#+# ms clock, #+#/#/#+# ms cpu, #->#-># MB, # MB goal, # MB stacks,
    # MB globals, # P

(``stacks`` and ``globals`` since 1.18; ``(forced)`` may follow).  Of each cycle the replay
keeps the ``@`` time, the heap at the start of the cycle (the first of ``#->#->#``) and the
live heap it marked (the third).  The line may stand behind a log collector's prefix (CRI's
``TIMESTAMP stderr F``, journald's ``DATE host unit[pid]:``): it is found wherever it starts.
Every other line — ``scav`` lines, the program's own output, garbage — is skipped; numbers
are read with bounded digits, so no line can blow up the parser.

A file may hold several lifetimes of the program (a restart: the gc numbers start again).
They are never stitched: the longest (most cycles; the last of equals) is replayed, and the
scenario's description says which.  Within a lifetime a cycle whose time goes back is
skipped; cycles sharing one ``@`` time (a high GC rate) are all kept.

Times are taken relative to the first cycle: an excerpt of a service that has run for days
(``gc 48211 @172801.7s``) lasts its own span.  The live heap first ramps from zero to the
first cycle's over a start-up of ``min(first @time, the mean interval)`` s.  Cycle *i* then
becomes a phase from cycle *i−1*'s time to its own, in which the live heap ramps from cycle
*i−1*'s live heap to cycle *i*'s, and the bytes allocated meanwhile (heap at start of *i*
less live heap of *i−1*) are split into that growth, held, and the rest, garbage spread
evenly over the phase (a cycle at the same time as the one before adds its garbage to the
next phase).  A trace of more than ``MAX_PHASES`` cycles is thinned evenly, the garbage of
the dropped cycles added to the next kept one.

Limits, checked before any daemon starts (:func:`check_limits`, a ``ScenarioError`` naming
the cycle: its gc number, ``@`` time and MB figure): the replay spans at most
``MAX_REPLAY_S`` (a scenario phase's limit, one day); each phase's garbage rate is at most
the scenario's ``MAX_MIB`` per second; the scaled live heap fits the heap at 90% (the heap
``--heap-mib`` gives, else three times the scaled peak, at least 256 MiB and at most
sweeperd's 16384 MiB).

:func:`fit` compares a run with its trace: for each of the run's own GC cycles (its gctrace
lines, their times moved to the scenario's clock) within the trace's span, the live heap it
marked against the trace's live heap at that moment — linear between the trace's cycles, as
the replay asks for it, scaled as the scenario was — relative to the trace's (at least 1 MiB,
Go's resolution).  The daemon's cycles fall where its own pacer puts them, so each one is a
measurement of how closely the heap followed the trace then.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sweeperd.workload.scenario import (
    MAX_FILE_BYTES,
    MAX_MIB,
    MAX_PHASES,
    Header,
    Phase,
    Scenario,
    ScenarioError,
)

MAX_TRACE_BYTES = 64 * MAX_FILE_BYTES
# (matched from a line's start by goref; searched for behind a log prefix by parse_trace)
GC_LINE = re.compile(
    r"(?<![\w.@-])gc (\d{1,12}) @(\d{1,9}(?:\.\d{1,9})?)s \d{1,4}%: .{0,400}? "
    r"(\d{1,12})->(\d{1,12})->(\d{1,12}) MB, (\d{1,12}) MB goal")
MIB = 1 << 20
MAX_REPLAY_S = 86_400.0  # a scenario phase's limit (scenario.Seconds): one day
MAX_HEAP_MIB = 16384  # sweeperd's heap limit (scenario.Header.heap_mib)
MAX_LINE = 2000  # characters of a line looked at (a prefix, then the gc line)


@dataclass(frozen=True)
class Cycle:
    n: int
    t: float  # seconds since the program started
    start_mib: int  # heap at the start of the cycle
    live_mib: int  # marked live
    goal_mib: int


def parse_lifetimes(text: str) -> list[list[Cycle]]:
    """The gctrace cycles of ``text``, one list per lifetime of the program (a gc number that
    does not grow starts a new one), each in time order; other lines are skipped, and so is a
    cycle that goes back in time within its lifetime."""
    lives: list[list[Cycle]] = []
    for line in text.splitlines():
        m = GC_LINE.search(line[:MAX_LINE])
        if m is None:
            continue
        c = Cycle(int(m[1]), float(m[2]), int(m[3]), int(m[5]), int(m[6]))
        if not lives or c.n <= lives[-1][-1].n:
            lives.append([c])
        elif c.t >= lives[-1][-1].t:
            lives[-1].append(c)
    return lives


def choose_lifetime(lives: list[list[Cycle]]) -> tuple[list[Cycle], str]:
    """The lifetime replayed — the longest, the last of equals — and a note saying which
    ("" when the file holds one)."""
    if not lives:
        return [], ""
    k = max(range(len(lives)), key=lambda i: (len(lives[i]), i))
    best = lives[k]
    if len(lives) == 1:
        return best, ""
    return best, (f"lifetime {k + 1} of {len(lives)} in the file (a restart starts the gc "
                  f"numbers again), the longest: gc {best[0].n}..{best[-1].n}")


def parse_trace(text: str) -> list[Cycle]:
    """The cycles of the lifetime :func:`choose_lifetime` replays."""
    return choose_lifetime(parse_lifetimes(text))[0]


def read_trace(path: str) -> tuple[list[Cycle], str]:
    """The cycles to replay from the file ``path``, and the note of :func:`choose_lifetime`;
    ``ScenarioError`` naming the file when it cannot be read or holds fewer than 2."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_TRACE_BYTES + 1)
    except OSError as e:
        raise ScenarioError(f"--replay {path}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_TRACE_BYTES:
        raise ScenarioError(f"--replay {path}: larger than {MAX_TRACE_BYTES >> 20} MiB")
    cycles, note = choose_lifetime(parse_lifetimes(raw.decode(errors="replace")))
    if len(cycles) < 2:
        raise ScenarioError(f"--replay {path}: {len(cycles)} gctrace cycle line(s) found; a "
                            "replay needs at least 2 (GODEBUG=gctrace=1 output, Go 1.19+)")
    return cycles, note


def load_trace(path: str) -> list[Cycle]:
    return read_trace(path)[0]


def start_up_s(cycles: list[Cycle]) -> float:
    """How long the replay ramps the live heap up to the first cycle's: the first cycle's
    time, at most the trace's mean interval between cycles (0.0 for a trace of no span)."""
    span = cycles[-1].t - cycles[0].t
    mean = span / (len(cycles) - 1) if len(cycles) > 1 else 0.0
    first = cycles[0].t
    return min(first, mean) if first > 0 else mean


def scenario_time(cycles: list[Cycle]) -> float:
    """What to subtract from a cycle's ``@`` time for the scenario's clock."""
    return cycles[0].t - start_up_s(cycles)


def _where(c: Cycle) -> str:
    return f"gc {c.n} @{c.t}s"


def check_limits(cycles: list[Cycle], scale: float = 1.0, heap_mib: int | None = None) -> int:
    """The replay's span and heap within the scenario limits (module docstring); returns the
    heap (MiB) the scenario gets.  ``ScenarioError`` naming the first cycle that breaks one."""
    if not (math.isfinite(scale) and 0 < scale <= 1000):
        raise ScenarioError(f"--scale must be a number in (0, 1000], got {scale}")
    if len(cycles) < 2 or cycles[-1].t <= cycles[0].t:
        raise ScenarioError(f"its {len(cycles)} cycle(s) span no time"
                            + (f" (all at @{cycles[0].t:g}s)" if cycles else ""))
    for c in cycles:
        if c.t - cycles[0].t > MAX_REPLAY_S:
            raise ScenarioError(
                f"{_where(c)} is {c.t - cycles[0].t:g} s after the first cycle "
                f"({_where(cycles[0])}); a replay spans at most {MAX_REPLAY_S:g} s (one day): "
                "cut the trace")
    prev, t_prev = 0, scenario_time(cycles)
    for c in cycles:
        for what, mb in (("heap at start", c.start_mib), ("live heap", c.live_mib)):
            if mb * scale > MAX_MIB:
                raise ScenarioError(f"{_where(c)}: {what} {mb} MB is more than "
                                    f"{MAX_MIB:g} MiB at --scale {scale:g}")
        dt = c.t - t_prev
        garbage = max(0, c.start_mib - prev)
        if dt > 0 and garbage * scale / dt > MAX_MIB:
            raise ScenarioError(f"{_where(c)}: {garbage} MB allocated in {dt:g} s is "
                                f"more than {MAX_MIB:g} MiB/s at --scale {scale:g}")
        if dt > 0:
            t_prev = c.t
        prev = c.live_mib
    peak = max(cycles, key=lambda c: c.live_mib)
    live = peak.live_mib * scale
    heap = heap_mib if heap_mib is not None else min(
        MAX_HEAP_MIB, max(256, 64 * math.ceil(live * 3 / 64)))
    if live > 0.9 * heap:
        fix = ("raise --heap-mib or lower --scale" if heap_mib is not None and heap_mib <
               MAX_HEAP_MIB else f"lower --scale (sweeperd's heap is at most {MAX_HEAP_MIB} MiB)")
        raise ScenarioError(f"{_where(peak)}: live heap {peak.live_mib} MB "
                            f"({live:g} MiB at --scale {scale:g}) does not fit a {heap} MiB "
                            f"heap (at most 90% of it): {fix}")
    return heap


def _thin(cycles: list[Cycle]) -> list[tuple[Cycle, float]]:
    """(cycle, garbage MiB allocated since the previous kept cycle), at most MAX_PHASES."""
    garbage, prev_live = [], 0
    for c in cycles:
        garbage.append(max(0, c.start_mib - prev_live - max(0, c.live_mib - prev_live)))
        prev_live = c.live_mib
    keep = set(np.linspace(0, len(cycles) - 1, min(len(cycles), MAX_PHASES)).round().astype(int)
               .tolist())
    out, owed = [], 0.0
    for i, c in enumerate(cycles):
        owed += garbage[i]
        if i in keep:
            out.append((c, owed))
            owed = 0.0
    return out


def to_scenario(cycles: list[Cycle], scale: float = 1.0, heap_mib: int | None = None,
                name: str = "replay", note: str = "") -> Scenario:
    """The scenario that replays ``cycles`` (module docstring), scaled; ``ScenarioError``
    naming the cycle when it breaks a limit (:func:`check_limits`)."""
    heap = check_limits(cycles, scale, heap_mib)
    t0 = scenario_time(cycles)
    phases, t_prev, live_prev, owed = [], t0, 0.0, 0.0
    for c, garbage in _thin(cycles):
        dt = c.t - t_prev
        owed += garbage
        live = float(c.live_mib)
        if dt <= 0:  # at the same time as the one before: its garbage goes to the next
            live_prev = live
            continue
        phases.append(Phase(seconds=dt, live_mib=[live_prev, live] if live != live_prev else live,
                            garbage_mib_s=owed / dt, name=f"gc {c.n}"))
        t_prev, live_prev, owed = c.t, live, 0.0
    desc = f"replay of {len(cycles)} gctrace cycles" + (f"; {note}" if note else "")
    sc = Scenario(Header(name=name, description=desc[:2000], heap_mib=MAX_HEAP_MIB),
                  tuple(phases))
    return sc.scaled(scale, heap)


def fit(trace: list[Cycle], run_lines: list[str], sc: Scenario,
        start_s: float) -> dict[str, Any]:
    """How closely a run's live heap followed the trace's (scaled as the scenario was);
    ``start_s``: when the run's scenario started, in its gctrace lines' seconds."""
    scale = _scale_of(trace, sc)
    t0 = scenario_time(trace)
    ts = [c.t - t0 for c in trace]
    lives = [c.live_mib * scale for c in trace]
    errs = []
    for c in parse_trace("\n".join(run_lines)):
        t = c.t - start_s
        if ts[0] <= t <= ts[-1]:
            want = max(float(np.interp(t, ts, lives)), 1.0)
            errs.append(abs(c.live_mib - want) / want)
    return {"cycles": len(errs),
            "live_bytes_rel_error_median": float(np.median(errs)) if errs else None,
            "live_bytes_rel_error_p90": float(np.percentile(errs, 90)) if errs else None}


def _scale_of(trace: list[Cycle], sc: Scenario) -> float:
    peak = max(c.live_mib for c in trace)
    return sc.peak_live_mib / peak if peak else 1.0
