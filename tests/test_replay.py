"""Replaying a Go gctrace: parsing (hostile text included), the scenario it makes, the fit."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.loadtest import replay
from sweeperd.workload.scenario import MAX_PHASES, ScenarioError, Schedule

TRACES = Path(__file__).resolve().parents[1] / "config" / "traces"

LINES = """\
scav 0 KiB work, 1536 KiB total, 100% util
gc 1 @0.500s 2%: 0.026+0.39+0.10 ms clock, 0.21+0.35/0.80/0.06+0.81 ms cpu, 4->6->2 MB, 5 MB goal, 0 MB stacks, 0 MB globals, 8 P
hello from the program
gc 2 @1.500s 3%: 0.02+0.3+0.1 ms clock, 0.2+0.3/0.8/0.06+0.8 ms cpu, 30->31->20 MB, 40 MB goal, 0 MB stacks, 0 MB globals, 8 P
gc 3 @1.400s 3%: 0.02+0.3+0.1 ms clock, 0.2+0.3/0.8/0.06+0.8 ms cpu, 9->9->9 MB, 40 MB goal, 0 MB stacks, 0 MB globals, 8 P
gc 4 @3.500s 1%: 0.02+0.3+0.1 ms clock, 0.2+0.3/0.8/0.06+0.8 ms cpu, 60->61->10 MB, 40 MB goal, 0 MB stacks, 0 MB globals, 8 P (forced)
gc 5 @4.000s 1%: 0.1+0.2+0.1 ms clock, 0.1+0.1/0.1/0.1+0.1 ms cpu, 14->14->12 MB, 20 MB goal, 8 P
"""  # noqa: E501


def test_parse_keeps_gc_lines_in_time_order_and_skips_the_rest() -> None:
    cycles = replay.parse_trace(LINES)
    assert [c.n for c in cycles] == [1, 2, 4, 5]  # scav, program output, a step back: skipped
    assert cycles[1] == replay.Cycle(2, 1.5, 30, 20, 40)
    assert cycles[2].live_mib == 10  # "(forced)" after the line is fine
    assert cycles[3].start_mib == 14  # Go 1.17's line, without stacks and globals, too


def test_the_scenario_holds_each_cycles_live_heap_at_its_time_and_its_garbage() -> None:
    cycles = replay.parse_trace(LINES)
    sc = replay.to_scenario(cycles)
    assert [p.seconds for p in sc.phase] == pytest.approx([0.5, 1.0, 2.0, 0.5])
    sched = Schedule(sc)
    mib = 1 << 20
    for c in cycles:  # at each cycle's time, the live heap it marked
        assert sched.at(c.t - 1e-9).live_bytes == pytest.approx(c.live_mib * mib, rel=1e-6)
    # cycle 2: 30 MB at its start, 2 live before, 18 of growth -> 10 MB of garbage in 1 s
    assert sc.phase[1].garbage_mib_s == pytest.approx(10.0)
    # cycle 4: 61 - ... : 60 at start, 20 live before, live fell -> 40 MB garbage in 2 s
    assert sc.phase[2].garbage_mib_s == pytest.approx(20.0)
    assert sc.scenario.heap_mib >= 256


def test_a_long_trace_is_thinned_keeping_its_garbage() -> None:
    lines = [f"gc {i} @{i * 0.1:.3f}s 1%: x, 30->31->10 MB, 20 MB goal, 2 P"
             for i in range(1, 3001)]
    cycles = replay.parse_trace("\n".join(lines))
    assert len(cycles) == 3000
    sc = replay.to_scenario(cycles)
    assert len(sc.phase) <= MAX_PHASES - 1  # room for the hold of --repeat
    total = sum(p.seconds * p.garbage_mib_s for p in sc.phase)  # type: ignore[operator]
    assert total == pytest.approx(20 * 3000, rel=1e-6)  # every cycle's garbage kept


def test_load_trace_errors_name_the_file(tmp_path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("nothing here\n")
    with pytest.raises(ScenarioError, match=r"t\.txt: 0 gctrace"):
        replay.load_trace(str(p))
    with pytest.raises(ScenarioError, match="cannot read"):
        replay.load_trace(str(tmp_path / "missing"))


@pytest.mark.parametrize("name", ["go-sawtooth.gctrace", "go-spike-then-idle.gctrace"])
def test_shipped_traces_are_real_go_output(name: str) -> None:
    text = (TRACES / name).read_text()
    cycles = replay.load_trace(str(TRACES / name))
    assert len(cycles) >= 20
    assert any(ln.startswith("scav ") for ln in text.splitlines())  # interleaved, skipped
    assert all(ln.startswith(("gc ", "scav ")) for ln in text.splitlines() if ln)
    assert replay.to_scenario(cycles).seconds > 20


def test_fit_is_zero_for_a_run_that_matches_and_grows_with_the_miss() -> None:
    trace = replay.parse_trace(LINES)
    sc = replay.to_scenario(trace)
    same = [f"gc {i} @{c.t + 2.0:.3f}s 1%: x, 1->1->{c.live_mib} MB, 9 MB goal, 2 P"
            for i, c in enumerate(trace, 1)]
    f = replay.fit(trace, same, sc, start_s=2.0)
    assert f["cycles"] == 4 and f["live_bytes_rel_error_median"] == 0
    off = [ln.replace(f"->{c.live_mib} MB", f"->{c.live_mib * 2} MB")
           for ln, c in zip(same, trace, strict=True)]
    f2 = replay.fit(trace, off, sc, start_s=2.0)
    assert f2["live_bytes_rel_error_median"] == pytest.approx(1.0)
    assert replay.fit(trace, [], sc, 0.0)["cycles"] == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.text(max_size=200),
    st.builds(lambda n, t, a, b, c, g: f"gc {n} @{t}s 5%: x, {a}->{b}->{c} MB, {g} MB goal",
              st.integers(-5, 10**40), st.floats(allow_nan=True, allow_infinity=True),
              st.integers(0, 10**40), st.integers(0, 10**40), st.integers(0, 10**40),
              st.integers(0, 10**40))), max_size=30))
def test_fuzzed_traces_parse_or_fail_as_scenario_errors(lines: list[str]) -> None:
    cycles = replay.parse_trace("\n".join(lines))
    assert all(a.t <= b.t and a.n < b.n for a, b in itertools.pairwise(cycles))
    if len(cycles) >= 2:
        try:
            sc = replay.to_scenario(cycles)
        except ScenarioError:
            return  # too big for any heap: said so
        assert sc.seconds > 0


def test_a_pathological_line_is_bounded() -> None:
    line = "gc 1 @1.0s 1%: " + "9" * 100_000 + "->1->1 MB, 1 MB goal"
    assert replay.parse_trace(line + "\n" + "gc " * 100_000) == []
