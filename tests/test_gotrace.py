"""Go's trace lines: the formatting against Go's own examples, the SWEEPERD_DEBUG parser under
hostile input, and a live daemon's lines parsed with Go's documented format."""

from __future__ import annotations

import io
import os
import re
import signal
import threading
import urllib.request

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeperd.daemon.gotrace import (
    GcLine,
    ScavLine,
    ScavLine121,
    Tracer,
    fmt_ns_as_ms,
    format_scav,
    parse_debug,
)

from .daemon import Daemon

# Go's documented formats (runtime/extern.go, Go 1.19): every field a number
GC_RE = re.compile(
    r"^gc (\d+) @(\d+\.\d{3})s (\d+)%: "
    r"(\d+(?:\.\d+)?)\+(\d+(?:\.\d+)?)\+(\d+(?:\.\d+)?) ms clock, "
    r"(\d+(?:\.\d+)?)\+(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)\+(\d+(?:\.\d+)?) ms cpu, "
    r"(\d+)->(\d+)->(\d+) MB, (\d+) MB goal, (\d+) MB stacks, (\d+) MB globals, (\d+) P"
    r"( \(forced\))?$")
SCAV_RE = re.compile(r"^scav (\d+) KiB work, (\d+) KiB total, (\d+)% util( \(forced\))?$")
# Go 1.21's (go1.21 runtime/mgcscavenge.go printScavTrace; what every Go since prints)
SCAV_121_RE = re.compile(r"^scav (\d+) KiB work \(bg\), (\d+) KiB work \(eager\), (\d+) KiB now, "
                         r"(\d+)% util( \(forced\)| \[controller reset\])?$")


@pytest.mark.parametrize("ns,text", [
    (27_000, "0.027"), (22_000, "0.022"), (1_000_000, "1.0"), (1_100_000, "1.1"),
    (580_000, "0.58"), (8_000, "0.008"), (210_000, "0.21"), (5_550_000, "5.5"),
    (9_999_999, "9.9"), (10_000_000, "10"), (123_456_789, "123"), (999, "0"), (0, "0"),
])
def test_times_are_formatted_as_gos_fmtNSAsMS(ns, text):
    assert fmt_ns_as_ms(ns) == text


def test_a_gc_line_is_go_1_19s_example_field_for_field():
    line = GcLine(1, 24_300_000, 1, (27_000, 1_000_000, 22_000),
                  (210_000, 1_100_000, 580_000, 8_000, 170_000), 4 << 20, 4 << 20, 0, 4 << 20, 8)
    assert str(line) == ("gc 1 @0.024s 1%: 0.027+1.0+0.022 ms clock, 0.21+1.1/0.58/0.008+0.17 "
                         "ms cpu, 4->4->0 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 8 P")
    assert GC_RE.match(str(line))
    forced = GcLine(7, 1_234_567_890, 0, (0, 0, 0), (0,) * 5, 0, 0, 0, 0, 2, forced=True)
    assert str(forced).endswith("2 P (forced)") and GC_RE.match(str(forced))


def test_a_scav_line_counts_kib_and_utilisation_as_go_does():
    line = ScavLine(work_bytes=3 << 20, total_bytes=(5 << 20) + 1023, in_use_bytes=75 << 20,
                    free_bytes=25 << 20)
    assert str(line) == "scav 3072 KiB work, 5120 KiB total, 75% util"
    assert str(ScavLine(0, 0, 0, 0, forced=True)) == (
        "scav 0 KiB work, 0 KiB total, 0% util (forced)")


def test_the_tracer_writes_a_cycle_from_the_loops_figures():
    out = io.StringIO()
    t = Tracer(gctrace=True, scavtrace=True, t0=100.0, procs=4, out=out, version="1.19")
    t.triggered(101.5, 30 << 20, 32 << 20, False, 2.0)
    t.marked(101.52, 31 << 20, 12 << 20, 2.03)  # mutators marked 30 ms in all
    t.mark_terminated(0.0004)
    t.swept(0.05)  # GC work: 30 + 50 + 0.4 ms over 2 s x 4 CPUs = 1%
    t.cycle_ended(1, 102.0, 8 << 20, 6 << 20, 40 << 20, 10 << 20)
    gc, scav = out.getvalue().splitlines()
    assert gc == ("gc 1 @1.500s 1%: 0+20+0.40 ms clock, 0+0/30/0+0.40 ms cpu, 30->31->12 MB, "
                  "32 MB goal, 0 MB stacks, 0 MB globals, 4 P")
    assert scav == "scav 8192 KiB work, 6144 KiB total, 80% util"
    t.scavenged(10 << 20, 8 << 20, 40 << 20, 10 << 20, forced=True)
    assert out.getvalue().splitlines()[-1] == (
        "scav 2048 KiB work, 8192 KiB total, 80% util (forced)")


def test_sweeperd_debug_is_read_as_godebug():
    assert parse_debug("gctrace=1,scavtrace=1") == {"gctrace": 1, "scavtrace": 1}
    assert parse_debug(" gctrace = 2 , junk, =5, scavtrace=x, a=b=c") == {"gctrace": 2}
    assert parse_debug("") == {}


@given(st.text(max_size=300))
def test_sweeperd_debug_never_raises(text):
    out = parse_debug(text)
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in out.items())


@given(st.lists(st.integers(min_value=-10**30, max_value=10**30), min_size=1, max_size=3))
def test_huge_and_negative_figures_still_format(values):
    v = values[0]
    assert GC_RE.match(str(GcLine(1, abs(v), 0, (v, v, v), (v,) * 5, abs(v), abs(v), abs(v),
                                  abs(v), 1)))
    assert SCAV_RE.match(str(ScavLine(v, abs(v), abs(v), abs(v))))
    assert SCAV_121_RE.match(str(ScavLine121(v, v, v, abs(v), abs(v))))


def test_a_1_21_scav_line_is_go_1_21s_field_for_field():
    """go1.21 printScavTrace: releasedBg>>10 " KiB work (bg), " releasedEager>>10 " KiB work
    (eager), " heapReleased>>10 " KiB now, " heapInUse*100/heapRetained "% util", then
    " (forced)" if forced, else " [controller reset]" once after a reset."""
    line = ScavLine121(bg_bytes=3 << 20, eager_bytes=(1 << 20) + 1023,
                       released_bytes=5 << 20, in_use_bytes=75 << 20, free_bytes=25 << 20)
    assert str(line) == ("scav 3072 KiB work (bg), 1024 KiB work (eager), 5120 KiB now, "
                         "75% util")
    assert str(ScavLine121(0, 0, 0, 0, 0, forced=True, controller_reset=True)) == (
        "scav 0 KiB work (bg), 0 KiB work (eager), 0 KiB now, 0% util (forced)")
    assert str(ScavLine121(0, 0, 0, 1, 0, controller_reset=True)) == (
        "scav 0 KiB work (bg), 0 KiB work (eager), 0 KiB now, 100% util [controller reset]")


def test_the_tracer_splits_1_21s_work_into_bg_and_eager():
    out = io.StringIO()
    t = Tracer(gctrace=False, scavtrace=True, t0=0.0, out=out)  # the default version: 1.21
    t.cycle_ended(1, 1.0, 8 << 20, 6 << 20, 40 << 20, 10 << 20, eager_total=2 << 20)
    t.scavenged(10 << 20, 8 << 20, 40 << 20, 10 << 20, 3 << 20, forced=True)
    assert out.getvalue().splitlines() == [
        "scav 6144 KiB work (bg), 2048 KiB work (eager), 6144 KiB now, 80% util",
        "scav 1024 KiB work (bg), 1024 KiB work (eager), 8192 KiB now, 80% util (forced)"]


@given(st.sampled_from(["1.19", "1.21"]), st.integers(0, 1 << 50), st.integers(0, 1 << 50),
       st.integers(0, 1 << 50), st.integers(0, 1 << 50), st.integers(0, 1 << 50),
       st.booleans())
def test_format_scav_gives_each_versions_line_with_its_figures(version, work, eager, now,
                                                              in_use, free, forced):
    eager = min(eager, work)
    line = format_scav(version, work, eager, now, now, in_use, free, forced)
    util = in_use * 100 // (in_use + free) if in_use + free else 0
    if version == "1.19":
        m = SCAV_RE.match(line)
        assert m and (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (
            work >> 10, now >> 10, util)
        assert bool(m.group(4)) == forced
    else:
        m = SCAV_121_RE.match(line)
        assert m and (int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))) == (
            (work - eager) >> 10, eager >> 10, now >> 10, util)
        assert (m.group(5) == " (forced)") == forced


@pytest.mark.parametrize("version", ["1.20", "1.9", "", "go1.21"])
def test_format_scav_refuses_other_versions(version):
    with pytest.raises(ValueError, match=r"1\.19, 1\.21"):
        format_scav(version, 0, 0, 0, 0, 0, 0)


def _metric(body: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    assert m, name
    return float(m.group(1))


def test_a_daemon_prints_parseable_lines_that_agree_with_its_metrics():
    """`sweeperd run --policy jemalloc-decay --gctrace --scavtrace` on defaults: every trace
    line parses with Go's format (the scav lines Go 1.21's: the default version); the cycles
    count 1, 2, 3 ... as sweeperd_gc_cycles_total
    does; the goal a scrape shows is the goal the next cycles' lines were triggered
    against."""
    d = Daemon("--policy", "jemalloc-decay", "--gctrace", "--scavtrace")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(d.proc.stderr.readline, "")),
                              daemon=True)  # read as it writes: a full pipe would stall it
    reader.start()
    try:
        d.wait_for(lambda s: s["cycle"] >= 5, what="5 cycles")
        body = urllib.request.urlopen(d.metrics, timeout=10).read().decode()
        cycles = int(_metric(body, "sweeperd_gc_cycles_total"))
        goal = int(_metric(body, "sweeperd_heap_goal_bytes"))
        d.wait_for(lambda s: s["cycle"] >= cycles + 3, what="3 more cycles")
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(120) == 0
        reader.join(10)
    finally:
        d.close()
    err = "".join(lines)
    gcs = [GC_RE.match(x) for x in err.splitlines() if x.startswith("gc ")]
    scavs = [SCAV_121_RE.match(x) for x in err.splitlines() if x.startswith("scav ")]
    assert gcs and all(gcs), [x for x in err.splitlines() if x.startswith("gc ")][:3]
    assert scavs and all(scavs)
    ns = [int(m.group(1)) for m in gcs if m]
    assert ns == list(range(1, len(ns) + 1)) and len(ns) >= cycles + 3
    by_n = {int(m.group(1)): m for m in gcs if m}
    assert goal >> 20 in (int(by_n[cycles + 1].group(15)), int(by_n[cycles + 2].group(15)))
    for m in gcs:
        assert m is not None and 0 <= int(m.group(3)) <= 100
        assert int(m.group(18)) == (os.cpu_count() or 1)
        h0, h1, h2 = int(m.group(12)), int(m.group(13)), int(m.group(14))
        assert h2 <= h1 + 1 and h0 <= h1 + 1  # the live heap is what was there
    assert len(scavs) >= len(gcs)  # one per cycle
    assert all(0 <= int(m.group(4)) <= 100 for m in scavs if m)
