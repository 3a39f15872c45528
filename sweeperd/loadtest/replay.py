"""Replay a real Go service: its ``GODEBUG=gctrace=1`` output turned into a scenario.

Theory of operation
-------------------
Go 1.19's gctrace line (``runtime/extern.go``) is::

    gc # @#s #%: #+#+# ms clock, #+#/#/#+# ms cpu, #->#-># MB, # MB goal, # MB stacks,
    # MB globals, # P

(``stacks`` and ``globals`` since 1.18; ``(forced)`` may follow).  Of each cycle the replay
keeps the ``@`` time, the heap at the start of the cycle (the first of ``#->#->#``) and the
live heap it marked (the third).  Every other line — ``scav`` lines, the program's own output,
garbage — is skipped; numbers are read with bounded digits, so no line can blow up the parser.

Cycle *i* becomes a phase from cycle *i−1*'s time to its own, in which the live heap ramps
from cycle *i−1*'s live heap to cycle *i*'s, and the bytes allocated meanwhile (heap at start
of *i* less live heap of *i−1*) are split into that growth, held, and the rest, garbage
spread evenly over the phase.  A trace of more than ``MAX_PHASES`` cycles is thinned evenly,
the garbage of the dropped cycles added to the next kept one.

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
    MAX_PHASES,
    Header,
    Phase,
    Scenario,
    ScenarioError,
)

MAX_TRACE_BYTES = 64 * MAX_FILE_BYTES
GC_LINE = re.compile(
    r"^gc (\d{1,12}) @(\d{1,9}(?:\.\d{1,9})?)s \d{1,4}%: .{0,400}? "
    r"(\d{1,12})->(\d{1,12})->(\d{1,12}) MB, (\d{1,12}) MB goal")
MIB = 1 << 20


@dataclass(frozen=True)
class Cycle:
    n: int
    t: float  # seconds since the program started
    start_mib: int  # heap at the start of the cycle
    live_mib: int  # marked live
    goal_mib: int


def parse_trace(text: str) -> list[Cycle]:
    """The gctrace cycles of ``text``, in time order; other lines are skipped, and so is a
    cycle that goes back in time."""
    out: list[Cycle] = []
    for line in text.splitlines():
        m = GC_LINE.match(line.strip()[:1000])
        if m is None:
            continue
        c = Cycle(int(m[1]), float(m[2]), int(m[3]), int(m[5]), int(m[6]))
        if out and c.t <= out[-1].t:
            continue
        out.append(c)
    return out


def load_trace(path: str) -> list[Cycle]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_TRACE_BYTES + 1)
    except OSError as e:
        raise ScenarioError(f"--replay {path}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_TRACE_BYTES:
        raise ScenarioError(f"--replay {path}: larger than {MAX_TRACE_BYTES >> 20} MiB")
    cycles = parse_trace(raw.decode(errors="replace"))
    if len(cycles) < 2:
        raise ScenarioError(f"--replay {path}: {len(cycles)} gctrace cycle line(s) found; a "
                            "replay needs at least 2 (GODEBUG=gctrace=1 output, Go 1.19+)")
    return cycles


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
                name: str = "replay") -> Scenario:
    phases, t_prev, live_prev = [], 0.0, 0.0
    for c, garbage in _thin(cycles):
        dt = c.t - t_prev
        if dt <= 0:
            continue
        live = float(c.live_mib)
        phases.append(Phase(seconds=dt, live_mib=[live_prev, live] if live != live_prev else live,
                            garbage_mib_s=garbage / dt, name=f"gc {c.n}"))
        t_prev, live_prev = c.t, live
    peak = max(c.live_mib for c in cycles)
    heap = max(256, 64 * math.ceil(peak * 3 / 64))
    sc = Scenario(Header(name=name, description=f"replay of {len(cycles)} gctrace cycles",
                         heap_mib=min(heap, 16384)), tuple(phases))
    return sc.scaled(scale, heap_mib)


def fit(trace: list[Cycle], run_lines: list[str], sc: Scenario,
        start_s: float) -> dict[str, Any]:
    """How closely a run's live heap followed the trace's (scaled as the scenario was);
    ``start_s``: when the run's scenario started, in its gctrace lines' seconds."""
    scale = _scale_of(trace, sc)
    ts = [c.t for c in trace]
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
