"""Go's trace lines (``GODEBUG=gctrace=1,scavtrace=1``), filled with sweeperd's own figures.

Theory of operation
-------------------
Tools that read a Go program's traces should read sweeperd's unchanged, so the lines are Go's,
field for field (runtime/mgc.go ``gcMarkTermination``; runtime/mgcscavenge.go
``printScavTrace``; the formats are documented in runtime/extern.go).  The ``scav`` line is
the one of the Go version ``[scavenger.go] version`` names (under every policy; "1.21", the
default, is every Go since):

    gc N @S.SSSs U%: a+b+c ms clock, a+b/c/d+e ms cpu, H0->H1->H2 MB, G MB goal, 0 MB stacks,
    0 MB globals, P P [(forced)]
    scav W KiB work, T KiB total, U% util [(forced)]                         (Go 1.19)
    scav B KiB work (bg), E KiB work (eager), N KiB now, U% util [(forced)]   (Go 1.21+)

Go 1.21's line (go1.21 runtime/mgcscavenge.go ``printScavTrace``): ``B`` bytes the
background scavenger released since the last line, ``E`` bytes allocation released
("eager": ``mheap.allocSpan`` over the memory limit, here ``scavenge.ScavengeAssist``), ``N``
bytes released now (``heapReleased``), ``U`` as 1.19's; `` (forced)`` after a forced
scavenge, else `` [controller reset]`` once after the scavenger's PI controller broke down
(:class:`ScavLine121` prints it when asked; the coordinator does not learn of a reset in the
scavenger process, so sweeperd's lines never carry it today).

What each field means here (README "Go's trace lines"): ``N`` the cycle, as
``sweeperd_gc_cycles_total`` counts it once the line is out; ``@`` seconds from the daemon's
start to the cycle's trigger; ``U%`` the GC's share of the machine's CPU since the start (the
mutators' marks, the sweepers' sweeps and the coordinator's mark termination, over elapsed
time × CPUs); clock: ``a`` 0 (the previous sweep is always finished before a trigger, so there
is no sweep termination), ``b`` the mark (trigger until every mutator marked), ``c`` mark
termination (the live heap, the goal, ``sweepgen`` += 2 and the sharding); cpu: ``a`` 0,
assist ``b`` 0 (sweeperd has no mark assists), background ``c`` the mutators' marking time,
idle ``d`` 0, ``e`` mark termination; ``H0`` the heap's objects at the trigger, ``H1`` at the
end of the mark, ``H2`` the live heap marked, ``G`` the goal the cycle was triggered against;
stacks and globals 0; ``P`` the machine's CPUs (GOMAXPROCS).  One ``scav`` line per cycle, and
one for each ``scavenge`` request (forced): ``W`` bytes released since the last line by the
books, ``T`` bytes released in all (``/memory/classes/heap/released``), ``U`` in-use pages over
in-use plus free backed pages (Go's heapInUse / heapRetained).

Megabytes are Go's ``>> 20``; times are Go's ``fmtNSAsMS`` (whole milliseconds from 10 ms up,
else two significant digits, at most three decimals).  The formatting is pure; :class:`Tracer`
gathers a cycle's figures from the coordinator's loop (its one owner) and writes the lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

MB_SHIFT = 20
KIB_SHIFT = 10


def fmt_ns_as_ms(ns: int) -> str:
    """Go's fmtNSAsMS: ``ns`` as milliseconds, whole from 10 ms up, else two significant
    digits with at most three decimals."""
    ns = max(0, int(ns))
    if ns >= 10_000_000:
        return str(ns // 1_000_000)
    x = ns // 1000
    if x == 0:
        return "0"
    dec = 3
    while x >= 100:
        x //= 10
        dec -= 1
    return _itoa_div(x, dec)


def _itoa_div(val: int, dec: int) -> str:
    """Go's itoaDiv: ``val / 10**dec`` with ``dec`` decimals."""
    if dec == 0:
        return str(val)
    s = str(val).rjust(dec + 1, "0")
    return f"{s[:-dec]}.{s[-dec:]}"


@dataclass(frozen=True)
class GcLine:
    n: int
    start_ns: int  # from the daemon's start to the trigger
    util_percent: int
    clock_ns: tuple[int, int, int]
    cpu_ns: tuple[int, int, int, int, int]  # sweep term, assist, background, idle, mark term
    heap0: int
    heap1: int
    heap2: int
    goal: int
    procs: int
    forced: bool = False

    def __str__(self) -> str:
        a, b, c = (fmt_ns_as_ms(x) for x in self.clock_ns)
        ca, cb, cc, cd, ce = (fmt_ns_as_ms(x) for x in self.cpu_ns)
        line = (f"gc {self.n} @{_itoa_div(self.start_ns // 1_000_000, 3)}s "
                f"{self.util_percent}%: {a}+{b}+{c} ms clock, {ca}+{cb}/{cc}/{cd}+{ce} ms cpu, "
                f"{self.heap0 >> MB_SHIFT}->{self.heap1 >> MB_SHIFT}->{self.heap2 >> MB_SHIFT} "
                f"MB, {self.goal >> MB_SHIFT} MB goal, 0 MB stacks, 0 MB globals, "
                f"{self.procs} P")
        return line + (" (forced)" if self.forced else "")


@dataclass(frozen=True)
class ScavLine:
    work_bytes: int
    total_bytes: int
    in_use_bytes: int
    free_bytes: int
    forced: bool = False

    def __str__(self) -> str:
        retained = self.in_use_bytes + self.free_bytes
        util = self.in_use_bytes * 100 // retained if retained > 0 else 0
        line = (f"scav {max(0, self.work_bytes) >> KIB_SHIFT} KiB work, "
                f"{self.total_bytes >> KIB_SHIFT} KiB total, {util}% util")
        return line + (" (forced)" if self.forced else "")


@dataclass(frozen=True)
class ScavLine121:
    """Go 1.21's ``scav`` line (go1.21 runtime/mgcscavenge.go ``printScavTrace``).  Its
    ``str`` is the line; ``util`` is ``in_use * 100 // (in_use + free)`` (Go:
    ``heapInUse * 100 / heapRetained``), 0 when nothing is retained."""

    bg_bytes: int  # released by the background scavenger since the last line
    eager_bytes: int  # released by allocation (the assist) since the last line
    released_bytes: int  # released now (Go's heapReleased)
    in_use_bytes: int
    free_bytes: int
    forced: bool = False
    controller_reset: bool = False

    def __str__(self) -> str:
        retained = self.in_use_bytes + self.free_bytes
        util = self.in_use_bytes * 100 // retained if retained > 0 else 0
        line = (f"scav {max(0, self.bg_bytes) >> KIB_SHIFT} KiB work (bg), "
                f"{max(0, self.eager_bytes) >> KIB_SHIFT} KiB work (eager), "
                f"{max(0, self.released_bytes) >> KIB_SHIFT} KiB now, {util}% util")
        if self.forced:
            return line + " (forced)"
        return line + (" [controller reset]" if self.controller_reset else "")


SCAV_VERSIONS = ("1.19", "1.21")


def format_scav(version: str, work_bytes: int, eager_bytes: int, released_bytes: int,
                total_bytes: int, in_use_bytes: int, free_bytes: int, forced: bool = False,
                controller_reset: bool = False) -> str:
    """One ``scav`` line in Go ``version``'s format ("1.19" or "1.21"; ValueError else).
    ``work_bytes``: all released since the last line (1.19's work; 1.21's bg is it less
    ``eager_bytes``); ``released_bytes``: released now (1.21's "now"); ``total_bytes``: ever
    released (1.19's "total").  Pure: the replay reader round-trips against it."""
    if version == "1.19":
        return str(ScavLine(work_bytes, total_bytes, in_use_bytes, free_bytes, forced))
    if version == "1.21":
        return str(ScavLine121(work_bytes - eager_bytes, eager_bytes, released_bytes,
                               in_use_bytes, free_bytes, forced, controller_reset))
    raise ValueError(f"no scav line for Go {version!r}; one of {', '.join(SCAV_VERSIONS)}")


def parse_debug(text: str) -> dict[str, int]:
    """``SWEEPERD_DEBUG`` as Go reads ``GODEBUG``: comma-separated ``name=value`` with integer
    values.  Like Go, entries it cannot read are ignored (a typo must not stop a service)."""
    out: dict[str, int] = {}
    for item in text[:4096].split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        try:
            out[name] = int(value.strip(), 10)
        except ValueError:
            continue
    return out


@dataclass
class Tracer:
    """A cycle's figures, gathered from the coordinator's loop, and the lines written."""

    gctrace: bool
    scavtrace: bool
    t0: float  # the daemon's start, time.monotonic()
    procs: int = field(default_factory=lambda: os.cpu_count() or 1)
    out: TextIO = field(default_factory=lambda: sys.stderr)
    gc_seconds: float = 0.0  # GC work since the start (marks, sweeps, mark terminations)
    _trigger: tuple[float, int, int, bool, float] | None = None  # at, H0, goal, forced, marked
    _mark_end: tuple[float, int, int, float] | None = None  # at, H1, H2, mark seconds
    _mark_term_s: float = 0.0
    _released_seen: int = 0
    stopped: str = ""  # why tracing stopped (its stream failed), "" while it has not
    version: str = "1.21"  # the scav line's Go version ("1.19" | "1.21")
    _eager_seen: int = 0

    @property
    def on(self) -> bool:
        return self.gctrace or self.scavtrace

    def triggered(self, now: float, objects_bytes: int, goal_bytes: int, forced: bool,
                  mark_seconds_total: float) -> None:
        self._trigger = (now, objects_bytes, goal_bytes, forced, mark_seconds_total)

    def marked(self, now: float, objects_bytes: int, live_bytes: int,
               mark_seconds_total: float) -> None:
        self._mark_end = (now, objects_bytes, live_bytes, mark_seconds_total)

    def mark_terminated(self, seconds: float) -> None:
        self._mark_term_s = seconds
        self.gc_seconds += seconds

    def swept(self, seconds: float) -> None:
        self.gc_seconds += max(0.0, seconds)

    def cycle_ended(self, n: int, now: float, advised_total: int, released_bytes: int,
                    in_use_bytes: int, free_bytes: int, eager_total: int = 0) -> None:
        """Write the cycle's lines (``advised_total``: bytes ever released, by the books;
        ``released_bytes``: free bytes released now, Go's heap_released; ``eager_total``:
        of ``advised_total``, bytes ever released by allocation)."""
        if self.gctrace and self._trigger and self._mark_end:
            t_at, h0, goal, forced, m0 = self._trigger
            m_at, h1, h2, m1 = self._mark_end
            marking = max(0.0, m1 - m0)
            self.gc_seconds += marking
            elapsed = max(now - self.t0, 1e-9)
            util = int(self.gc_seconds / (elapsed * self.procs) * 100)
            term = round(self._mark_term_s * 1e9)
            self._write(GcLine(n, round((t_at - self.t0) * 1e9), util,
                               (0, round((m_at - t_at) * 1e9), term),
                               (0, 0, round(marking * 1e9), 0, term),
                               h0, h1, h2, goal, self.procs, forced))
        self._trigger = self._mark_end = None
        self.scavenged(advised_total, released_bytes, in_use_bytes, free_bytes, eager_total,
                       forced=False)

    def scavenged(self, advised_total: int, released_bytes: int, in_use_bytes: int,
                  free_bytes: int, eager_total: int = 0, *, forced: bool) -> None:
        """A ``scav`` line: what was released since the last one, and the state now."""
        if not self.scavtrace:
            return
        work = advised_total - self._released_seen
        eager = min(max(0, eager_total - self._eager_seen), max(0, work))
        self._write(format_scav(self.version, work, eager, released_bytes, released_bytes,
                                in_use_bytes, free_bytes, forced))
        self._released_seen = advised_total
        self._eager_seen = eager_total

    def _write(self, line: GcLine | ScavLine | str) -> None:
        """Write one line; if the stream is gone (EPIPE: the reader of ``2>&1 | head`` left,
        or it was closed), tracing stops and says so on stdout if stdout still works — the
        daemon itself goes on."""
        try:
            print(line, file=self.out, flush=True)
        except (OSError, ValueError) as e:
            self.gctrace = self.scavtrace = False
            self.stopped = f"{type(e).__name__}: {e}"
            if self.out is sys.stderr:  # nothing more goes there (nor at exit's flush)
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the process' life)
            with contextlib.suppress(OSError, ValueError):
                print(f"sweeperd: the trace stream failed ({self.stopped}); gctrace and "
                      "scavtrace stopped", file=sys.stdout, flush=True)
