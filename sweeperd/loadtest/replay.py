"""Replay a real Go service: its ``GODEBUG=gctrace=1`` output turned into a scenario.

Theory of operation
-------------------
Go's gctrace line (runtime/mgc.go ``gcMarkTermination``, the same in 1.19 and 1.21;
documented in ``runtime/extern.go``) is::

    gc # @#s #%: #+#+# ms clock, #+#/#/#+# ms cpu, #->#-># MB, # MB goal, # MB stacks,
    # MB globals, # P [(forced)]

(``stacks`` and ``globals`` since 1.18; `` (forced)`` when the program asked for the cycle,
``runtime.GC`` or ``debug.FreeOSMemory``).  Of each cycle the replay keeps the ``@`` time, the
heap at the start of the cycle (the first of ``#->#->#``), the live heap it marked (the third),
the goal and whether it was forced.  With ``GODEBUG=scavtrace=1`` the scavenger adds its own
line (runtime/mgcscavenge.go ``printScavTrace``), in Go 1.19 (and 1.20)::

    scav # KiB work, # KiB total, #% util [(forced)|[controller reset]]

and since Go 1.21, which splits the released bytes by who released them::

    scav # KiB work (bg), # KiB work (eager), # KiB now, #% util [(forced)|[controller reset]]

Both are read (:class:`Scav`); they tell which Go wrote the trace, and are counted in the plan's
note.  Each line is found wherever it starts on a line of the file: behind a log collector's
prefix of any shape (CRI's ``TIMESTAMP stderr F``, journald's ``DATE host unit[pid]:``, a
JSON ``{"log":"...``), after other output the line was glued to; a line holding several is
read for each.  Every other line is skipped; the file's bytes are decoded with invalid UTF-8
replaced; the first 64 KiB of a line are looked at (a collector's JSON record may carry
kilobytes of metadata before the line); numbers are read with bounded digits (a figure too
long to be Go's leaves its line unread), and the text between a gc line's ``%:`` and its ``MB
goal`` cannot hold an ``@``, so no gc line is read across another, and no line can blow up the
parser (its worst text is read at ~18 MB/s).

A file may hold several lifetimes of the program (a restart: ``gc 1`` again, or a gc number
and time that both fall by half or more).  They are never stitched: the longest (most
cycles; the last of equals) is replayed, and the scenario's description says which.  Within
a lifetime a line out of order (a log pipeline reorders lines) is put in its place by its gc
number; a cycle whose time then goes back is left out and counted in the description; a line
repeated as it was (at-least-once delivery) is skipped; cycles sharing one ``@`` time (a high
GC rate) are all kept.  A gc number read twice with other figures means the file mixes
several processes' lines (two pods' logs interleaved): refused, naming it; numbers that
start again at least every fourth cycle are said in the description (a crash loop, or
processes at far-apart numbers interleaved).  A ``scav`` line belongs to the lifetime of the
gc line before it, but Go prints one as a program's first sweep ends, before its ``gc 1``
(seen in both versions' real output): those before the file's first gc line belong to the
first lifetime, and at a restart the last one before the new ``gc 1`` to the new lifetime
(:func:`parse_log`).

Times are taken relative to the first cycle: an excerpt of a service that has run for days
(``gc 48211 @172801.7s``) lasts its own span.  The live heap first ramps from zero to the
first cycle's over a start-up of ``min(first @time, the mean interval)`` s.  Cycle *i* then
becomes a phase from cycle *i−1*'s time to its own, in which the live heap ramps from cycle
*i−1*'s live heap to cycle *i*'s, and the bytes allocated meanwhile (heap at start of *i*
less live heap of *i−1*) are split into that growth, held, and the rest, garbage spread
evenly over the phase (a cycle at the same time as the one before adds its garbage to the
next phase).  A trace of more than ``MAX_CYCLES`` cycles (a scenario's ``MAX_PHASES`` less
the start-up's and the ``--repeat`` hold's) is thinned evenly, the garbage of the dropped
cycles added to the next kept one.  The scenario's GOGC is the program's, read
from its goals (:func:`infer_gogc`).  A scenario cannot force a GC: a forced cycle
is replayed as the others (its live heap and garbage at its time, the daemon's pacer choosing
when it collects); its phase is named ``gc N (forced)`` and the description counts them.
:func:`forced_requests` gives them as control-plane requests at their times, for a harness.

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

The one error of this module is ``ScenarioError`` (from :func:`read_trace`,
:func:`check_limits`, :func:`to_scenario`); parsing text never raises.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
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
# (matched from a line's start by goref; searched for anywhere on a line by parse_log)
GC_LINE = re.compile(
    r"gc (\d{1,12}) @(\d{1,9}(?:\.\d{1,9})?)s \d{1,4}%: [^@]{0,400}? "
    r"(\d{1,12})->(\d{1,12})->(\d{1,12}) MB, (\d{1,12}) MB goal")
# what follows "MB goal" up to the line's end in Go 1.17..1.21+ (stacks, globals since 1.18)
GC_TAIL = re.compile(r"(?:, \d{1,20} MB stacks)?(?:, \d{1,20} MB globals)?, \d{1,9} P"
                     r"( \(forced\))?")
_SCAV_END = r"% util( \(forced\)| \[controller reset\])?"
SCAV_LINE_121 = re.compile(  # Go 1.21+ (mgcscavenge.go printScavTrace(releasedBg, releasedEager))
    r"scav (\d{1,20}) KiB work \(bg\), (\d{1,20}) KiB work \(eager\), (\d{1,20}) KiB now, "
    r"(\d{1,20})" + _SCAV_END)
SCAV_LINE_119 = re.compile(  # Go 1.19 and 1.20 (printScavTrace(released, forced))
    r"scav (\d{1,20}) KiB work, (\d{1,20}) KiB total, (\d{1,20})" + _SCAV_END)
MIB = 1 << 20
MAX_REPLAY_S = 86_400.0  # a scenario phase's limit (scenario.Seconds): one day
MAX_HEAP_MIB = 16384  # sweeperd's heap limit (scenario.Header.heap_mib)
MAX_LINE = 1 << 16  # characters of a line looked at (a JSON record's metadata, then the lines)


@dataclass(frozen=True)
class Cycle:
    """One gctrace line: Go's ``numgc``, its ``@`` time, ``heap0`` and ``heap2`` (MB) and
    ``lastHeapGoal`` (MB), and ``userForced``."""

    n: int
    t: float  # seconds since the program started
    start_mib: int  # heap at the start of the cycle
    live_mib: int  # marked live
    goal_mib: int
    forced: bool = False  # " (forced)": runtime.GC / debug.FreeOSMemory asked for it


@dataclass(frozen=True)
class Scav:
    """One scavtrace line, in Go's names (mgcscavenge.go ``printScavTrace``), KiB as printed.

    ``go``: "1.19" for the format of Go 1.19-1.20 (``work``, ``total``), "1.21" for Go 1.21+'s
    (``work (bg)``, ``work (eager)``, ``now``).  In the 1.19 format all of ``work`` is
    ``released_bg_kib`` (a forced line's too) and ``released_eager_kib`` is 0.
    ``heap_released_kib``: bytes released to the OS in all at that moment (``total``/``now``).
    ``util_percent``: heapInUse * 100 / heapRetained.  ``after_gc``: the gc number of the line
    before it in its lifetime (None before any)."""

    go: str
    released_bg_kib: int
    released_eager_kib: int
    heap_released_kib: int
    util_percent: int
    forced: bool = False
    controller_reset: bool = False
    after_gc: int | None = None


@dataclass
class Lifetime:
    """One run of the program in the file: its cycles in gc-number order and its scav lines;
    ``clashes``: gc numbers read twice with other figures (two processes' lines); ``skipped``:
    cycles left out because their time goes back."""

    cycles: list[Cycle]
    scavs: list[Scav]
    clashes: list[int] = field(default_factory=list)
    skipped: int = 0


def _records(line: str) -> list[tuple[int, str, Cycle | Scav]]:
    """Every gc and scav line on ``line`` (prefixed or glued to other text), by position, each
    with the text it was read from."""
    out: list[tuple[int, str, Cycle | Scav]] = []
    if "gc " in line:
        for m in GC_LINE.finditer(line):
            tail = GC_TAIL.match(line, m.end())
            end = tail.end() if tail else m.end()
            out.append((m.start(), line[m.start():end],
                        Cycle(int(m[1]), float(m[2]), int(m[3]), int(m[5]), int(m[6]),
                              bool(tail and tail[1]))))
    if "scav " in line:
        for m in SCAV_LINE_121.finditer(line):
            out.append((m.start(), m[0], Scav("1.21", int(m[1]), int(m[2]), int(m[3]),
                                              int(m[4]), m[5] == " (forced)",
                                              m[5] == " [controller reset]")))
        for m in SCAV_LINE_119.finditer(line):
            out.append((m.start(), m[0], Scav("1.19", int(m[1]), 0, int(m[2]), int(m[3]),
                                              m[4] == " (forced)",
                                              m[4] == " [controller reset]")))
    out.sort(key=lambda r: r[0])
    return out


def _restarts(r: Cycle, prev: Cycle) -> bool:
    """Does gc line ``r``, read after ``prev``, start a new run of the program?  A ``gc 1``
    does; so does a number and a time that both fall by half or more (an excerpt of the new
    run that lost its first lines).  A smaller fall is a line a log pipeline reordered."""
    if r.n == 1:
        return True
    return r.n < prev.n and r.t < prev.t and (2 * r.n <= prev.n or 2 * r.t <= prev.t)


def parse_log(text: str) -> list[Lifetime]:
    """The gc and scav lines of ``text``, one :class:`Lifetime` per run of the program
    (:func:`_restarts`), each in gc-number order; other lines are skipped, and so is a gc
    line repeated (the very text of one already read in this lifetime, clock figures
    included: a log pipeline's duplicate, not a restart).  A line out of order within its
    lifetime is put in its place; then a cycle whose time goes back is left out (counted in
    ``skipped``), and a gc number read twice with other figures is a ``clash``.  Scav lines
    go to the lifetime of the gc line before them, except that Go prints one as a program's
    first sweep ends, before its ``gc 1``: those before the file's first gc line go to the
    first lifetime, and at a restart the last scav line before the new lifetime's first gc
    line goes to the new one.  Never raises."""
    lives: list[Lifetime] = []
    seen: dict[int, str] = {}  # the gc lines of the lifetime being read, by number
    pending: list[Scav] = []  # scav lines since the last gc line taken
    prev: Cycle | None = None
    for line in text.splitlines():
        for _, said, r in _records(line[:MAX_LINE]):
            if isinstance(r, Scav):
                pending.append(replace(r, after_gc=prev.n) if prev is not None else r)
                continue
            if seen.get(r.n) == said:
                continue  # a duplicate
            if prev is None or _restarts(r, prev):
                if lives and pending:
                    lives[-1].scavs.extend(pending[:-1])
                    pending = [replace(pending[-1], after_gc=None)]
                lives.append(Lifetime([r], pending))
                seen, pending = {r.n: said}, []
            elif r.n in seen:
                lives[-1].clashes.append(r.n)
                continue
            else:
                lives[-1].cycles.append(r)
                lives[-1].scavs.extend(pending)
                seen[r.n] = said
                pending = []
            prev = r
    if lives:
        lives[-1].scavs.extend(pending)
    for life in lives:
        life.cycles.sort(key=lambda c: c.n)
        kept = [life.cycles[0]]
        for c in life.cycles[1:]:
            if c.t >= kept[-1].t:
                kept.append(c)
        life.skipped = len(life.cycles) - len(kept)
        life.cycles = kept
    return lives


def parse_lifetimes(text: str) -> list[list[Cycle]]:
    """The cycles of each lifetime of :func:`parse_log`."""
    return [life.cycles for life in parse_log(text)]


def choose_lifetime(lives: list[list[Cycle]]) -> tuple[list[Cycle], str]:
    """The lifetime replayed — the longest, the last of equals — and a note saying which
    ("" when the file holds one)."""
    if not lives:
        return [], ""
    k = _chosen(lives)
    best = lives[k]
    if len(lives) == 1:
        return best, ""
    return best, (f"lifetime {k + 1} of {len(lives)} in the file (a restart starts the gc "
                  f"numbers again), the longest: gc {best[0].n}..{best[-1].n}")


def _chosen(lives: list[list[Cycle]]) -> int:
    return max(range(len(lives)), key=lambda i: (len(lives[i]), i))


def parse_trace(text: str) -> list[Cycle]:
    """The cycles of the lifetime :func:`choose_lifetime` replays."""
    return choose_lifetime(parse_lifetimes(text))[0]


@dataclass(frozen=True)
class Trace:
    """What :func:`read_bytes` makes of a file: the lifetime replayed, its scav lines and the
    note for the scenario's description (which lifetime, which Go wrote the scav lines)."""

    cycles: list[Cycle]
    scavs: list[Scav]
    note: str


def scav_note(scavs: list[Scav]) -> str:
    """The scav lines in a few words: how many, in which Go's format, what they released."""
    if not scavs:
        return ""
    forms = sorted({s.go for s in scavs})
    fmt = " and ".join({"1.19": "Go 1.19-1.20's", "1.21": "Go 1.21+'s"}[f] for f in forms)
    bg = sum(s.released_bg_kib for s in scavs) / 1024
    eager = sum(s.released_eager_kib for s in scavs) / 1024
    forced = sum(s.forced for s in scavs)
    return (f"{len(scavs)} scav lines in {fmt} format ({bg:.0f} MiB released in the background"
            + (f", {eager:.0f} MiB eagerly" if "1.21" in forms else "")
            + (f", {forced} forced" if forced else "") + ")")


def forced_requests(cycles: list[Cycle], scavs: list[Scav]) -> list[tuple[float, str]]:
    """What the program asked of its runtime, as requests to sweeperd's control plane at
    seconds of the scenario's clock (the cycle's ``@`` time less :func:`scenario_time`; times
    are not scaled): ``"gc"`` for a forced cycle (``runtime.GC``), ``"gc+scavenge"`` for one
    followed by a forced scav line (``debug.FreeOSMemory``: runtime/debug's freeOSMemory
    forces a GC then scavenges all, mheap.go, printing ``scav … (forced)``).  The scenario
    cannot say these; a harness that runs the replay sends them at their times."""
    if not cycles:
        return []
    t0 = scenario_time(cycles)
    freed = {s.after_gc for s in scavs if s.forced}
    return [(c.t - t0, "gc+scavenge" if c.n in freed else "gc") for c in cycles if c.forced]


def read_bytes(raw: bytes, name: str = "trace") -> Trace:
    """The :class:`Trace` of a file's bytes (invalid UTF-8 replaced); ``ScenarioError``
    naming ``name`` when it holds fewer than 2 cycles to replay."""
    lives = parse_log(raw.decode(errors="replace"))
    cycles, note = choose_lifetime([life.cycles for life in lives])
    clashes = [n for life in lives for n in life.clashes]
    if clashes:
        raise ScenarioError(f"--replay {name}: gc {clashes[0]} is there twice with other "
                            f"figures ({len(clashes)} such): the file mixes several "
                            "processes' gctrace lines (give one process's, e.g. one pod's)")
    read = sum(len(life.cycles) + life.skipped for life in lives)
    if len(lives) > 2 and 4 * len(lives) > read:
        note += (f" (the gc numbers start again {len(lives) - 1} times in {read} cycles: a "
                 "crash loop, or several processes' lines interleaved)")
    skipped = lives[_chosen([life.cycles for life in lives])].skipped if lives else 0
    if len(cycles) < 2:
        raise ScenarioError(
            f"--replay {name}: {len(cycles)} gctrace cycle line(s) found"
            + (f" ({skipped} more left out: their time goes back)" if skipped else "")
            + "; a replay needs at least 2 (GODEBUG=gctrace=1 output, Go 1.17+)")
    scavs = lives[_chosen([life.cycles for life in lives])].scavs
    left = f"{skipped} cycle(s) left out: their time goes back" if skipped else ""
    return Trace(cycles, scavs, "; ".join(x for x in (note, left, scav_note(scavs)) if x))


def read_trace(path: str) -> tuple[list[Cycle], str]:
    """The cycles to replay from the file ``path``, and the note of :class:`Trace`;
    ``ScenarioError`` naming the file when it cannot be read, is too large or holds fewer
    than 2."""
    tr = read_file(path)
    return tr.cycles, tr.note


def read_file(path: str) -> Trace:
    """The :class:`Trace` of the file ``path`` (:func:`read_trace`'s errors)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_TRACE_BYTES + 1)
    except OSError as e:
        raise ScenarioError(f"--replay {path}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_TRACE_BYTES:
        raise ScenarioError(f"--replay {path}: larger than {MAX_TRACE_BYTES >> 20} MiB")
    return read_bytes(raw, path)


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
    # allocation rates as to_scenario's phases will have them: cycles at the time of the one
    # before allocate in the next phase (the last ones in the last phase)
    prev, t_prev, owed, last = 0, scenario_time(cycles), 0, (0, 0.0)
    for c in cycles:
        for what, mb in (("heap at start", c.start_mib), ("live heap", c.live_mib)):
            if mb * scale > MAX_MIB:
                raise ScenarioError(f"{_where(c)}: {what} {mb} MB is more than "
                                    f"{MAX_MIB:g} MiB at --scale {scale:g}")
        dt = c.t - t_prev
        owed += max(0, c.start_mib - prev)
        if dt > 0 or c is cycles[-1]:
            if dt <= 0:  # the last cycles share the last phase's time
                owed, dt = owed + last[0], last[1]
            if owed * scale / dt > MAX_MIB:
                raise ScenarioError(f"{_where(c)}: {owed} MB allocated in {dt:g} s is "
                                    f"more than {MAX_MIB:g} MiB/s at --scale {scale:g}")
            t_prev, owed, last = c.t, 0, (owed, dt)
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


MAX_CYCLES = MAX_PHASES - 2  # a phase each, less the start-up's and the hold's of --repeat


def _thin(cycles: list[Cycle]) -> list[tuple[Cycle, float]]:
    """(cycle, garbage MiB allocated since the previous kept cycle), at most MAX_CYCLES."""
    garbage, prev_live = [], 0
    for c in cycles:
        garbage.append(max(0, c.start_mib - prev_live - max(0, c.live_mib - prev_live)))
        prev_live = c.live_mib
    keep = set(np.linspace(0, len(cycles) - 1, min(len(cycles), MAX_CYCLES)).round().astype(int)
               .tolist())
    out, owed = [], 0.0
    for i, c in enumerate(cycles):
        owed += garbage[i]
        if i in keep:
            out.append((c, owed))
            owed = 0.0
    return out


GOGC_MIN_LIVE_MB = 16  # a live heap below this reads its ratio with more than 6% of rounding


def infer_gogc(cycles: list[Cycle]) -> int | None:
    """The GOGC the program ran with, read from its goals: a cycle's goal is the previous
    cycle's marked heap times ``1 + GOGC/100`` (mgcpacer.go ``heapGoalInternal``; since Go 1.18
    stacks and globals are added to the marked heap, small beside a heap of this size), so
    the median of ``goal / previous live`` over the cycles whose previous live heap is at
    least ``GOGC_MIN_LIVE_MB`` (Go prints whole MB), to the nearest 10, within the scenario's
    10..1000.  None when fewer than 3 cycles can say (the replay keeps GOGC 100).  A memory
    limit that binds lowers the goal: the median holds while it binds for fewer than half."""
    ratios = [c.goal_mib / p.live_mib for p, c in itertools.pairwise(cycles)
              if p.live_mib >= GOGC_MIN_LIVE_MB and c.goal_mib > 0]
    if len(ratios) < 3:
        return None
    gogc = round((float(np.median(ratios)) - 1.0) * 10) * 10
    return min(1000, max(10, gogc))


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
                            garbage_mib_s=owed / dt,
                            name=f"gc {c.n}" + (" (forced)" if c.forced else "")))
        t_prev, live_prev, owed = c.t, live, 0.0
    if owed > 0 and phases:  # the last cycles share the last phase's time: their garbage too
        ph = phases[-1]
        phases[-1] = msgspec.structs.replace(
            ph, garbage_mib_s=ph.garbage_mib_s + owed / ph.seconds)  # type: ignore[operator]
    desc = f"replay of {len(cycles)} gctrace cycles"
    if forced := [c.n for c in cycles if c.forced]:
        desc += (f"; {len(forced)} forced by the program (gc "
                 + ", ".join(map(str, forced[:8])) + (", ..." if len(forced) > 8 else "")
                 + "): replayed as the others, collected where the daemon's pacer puts them")
    gogc = infer_gogc(cycles)
    if gogc is not None:
        desc += f"; GOGC {gogc}, read from its goals"
    desc += f"; {note}" if note else ""
    sc = Scenario(Header(name=name, description=desc[:2000], heap_mib=MAX_HEAP_MIB,
                         gogc=gogc if gogc is not None else 100), tuple(phases))
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
