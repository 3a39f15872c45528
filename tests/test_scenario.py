"""Scenarios: the shipped files, decoding with errors that name the field, the schedule."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.workload import scenario as s
from sweeperd.workload.scenario import MIB, ScenarioError, Schedule

SHIPPED = ("steady", "spike-then-idle", "sawtooth", "fragmentation", "memory-limit-squeeze",
           "alloc-storm")

GOOD = """
[scenario]
name = "t"
heap_mib = 256

[[phase]]
seconds = 2
live_mib = [0, 100]
garbage_mib_s = 10

[[phase]]
name = "drop"
seconds = 3
live_mib = 5
garbage_mib_s = "max"
long_lived_every = 7
"""


def test_every_named_scenario_is_shipped_and_valid() -> None:
    assert set(SHIPPED) <= set(s.shipped())
    for name in SHIPPED:
        sc = s.load(name)
        assert sc.name == name
        assert sc.peak_live_mib <= 0.9 * sc.scenario.heap_mib
        assert s.parse(sc.to_toml()) == sc  # what the daemon is handed reads back the same


def test_shapes_of_the_shipped_scenarios() -> None:
    spike = s.load("spike-then-idle")
    assert spike.last_drop() is not None
    tail = spike.phase[-1]
    assert tail.live_to <= 0.05 * spike.peak_live_mib  # drops to a few percent of the peak
    saw = s.load("sawtooth")
    drops = sum(1 for a, b in zip(saw.phase, saw.phase[1:], strict=False)
                if b.live_from < a.live_to)
    assert drops == 3
    assert any(p.long_lived_every for p in s.load("fragmentation").phase)
    squeeze = s.load("memory-limit-squeeze")
    assert 0 < squeeze.scenario.memory_limit_mib < squeeze.peak_live_mib * 2
    assert any(p.garbage_mib_s == "max" for p in s.load("alloc-storm").phase)


def test_schedule_ramps_levels_and_holds_the_end() -> None:
    sc = s.parse(GOOD)
    sched = Schedule(sc, share=0.5)
    assert sched.at(-1).live_bytes == 0
    assert sched.at(1.0).live_bytes == pytest.approx(50 * MIB * 0.5)
    assert sched.at(1.0).garbage_bytes_per_s == pytest.approx(10 * MIB * 0.5)
    st3 = sched.at(3.0)
    assert st3.phase == 1 and st3.live_bytes == pytest.approx(5 * MIB * 0.5)
    assert math.isinf(st3.garbage_bytes_per_s) and st3.long_lived_every == 7
    assert sched.at(1e9).live_bytes == pytest.approx(5 * MIB * 0.5)  # after the end: the end
    assert sc.last_drop() == 2.0 and sc.seconds == 5.0


def test_scaled_multiplies_every_mib_figure() -> None:
    sc = s.parse(GOOD).scaled(2.0)
    assert sc.scenario.heap_mib == 512
    assert sc.phase[0].live_to == 200 and sc.phase[0].garbage_mib_s == 20
    assert sc.phase[1].garbage_mib_s == "max"
    assert s.parse(GOOD).scaled(1.0, heap_mib=1000).scenario.heap_mib == 1000
    with pytest.raises(ScenarioError, match="does not fit"):
        s.parse(GOOD).scaled(1.0, heap_mib=64)
    for bad in (0.0, -1.0, math.nan, math.inf, 1e9):
        with pytest.raises(ScenarioError, match="--scale"):
            s.parse(GOOD).scaled(bad)


@pytest.mark.parametrize("change, field", [
    (("seconds = 3", "seconds = 0"), "$.phase[1].seconds"),
    (("seconds = 3", "seconds = -4"), "$.phase[1].seconds"),
    (("seconds = 3", "seconds = nan"), "$.phase[1].seconds"),
    (("seconds = 3", 'seconds = "3"'), "$.phase[1].seconds"),
    (("live_mib = 5", "live_mib = inf"), "$.phase[1].live_mib"),
    (("live_mib = 5", "live_mib = [1, 2, 3]"), "$.phase[1].live_mib"),
    (("live_mib = 5", "live_mib = -5"), "$.phase[1].live_mib"),
    (('garbage_mib_s = "max"', 'garbage_mib_s = "lots"'), "$.phase[1].garbage_mib_s"),
    (("long_lived_every = 7", "long_lived_every = 1.5"), "$.phase[1].long_lived_every"),
    (("long_lived_every = 7", "size_classes = [0]"), "$.phase[1].size_classes[0]"),
    (("long_lived_every = 7", "size_classes = [68]"), "$.phase[1].size_classes[0]"),
    (("long_lived_every = 7", "colour = 1"), "colour"),
    (('name = "t"', 'name = "a b/../c"'), "$.scenario.name"),
    (("heap_mib = 256", "heap_mib = 99999"), "$.scenario.heap_mib"),
])
def test_bad_fields_are_named(change: tuple[str, str], field: str) -> None:
    with pytest.raises(ScenarioError) as e:
        s.parse(GOOD.replace(*change, 1), "x.toml")
    assert field in str(e.value) and "x.toml" in str(e.value)


def test_no_phase_bad_toml_and_missing_files() -> None:
    with pytest.raises(ScenarioError, match=r"phase"):
        s.parse('[scenario]\nname = "x"\n')
    with pytest.raises(ScenarioError, match="not valid TOML"):
        s.parse("[[phase]\n")
    with pytest.raises(ScenarioError, match="nested too deeply"):
        s.parse("a = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ScenarioError, match=r"no scenario 'nosuch'.*steady"):
        s.load("nosuch")
    with pytest.raises(ScenarioError, match="cannot read"):
        s.load("/nonexistent/dir/x.toml")


def test_load_reads_a_path(tmp_path) -> None:
    p = tmp_path / "mine.toml"
    p.write_text(GOOD)
    assert s.load(str(p)).name == "t"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioError, match="UTF-8"):
        s.load(str(p))
    p.write_text("x" * (s.MAX_FILE_BYTES + 10))
    with pytest.raises(ScenarioError, match="larger than"):
        s.parse(p.read_text())


_value = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30)
    | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(phase=st.dictionaries(st.sampled_from(
    ["seconds", "live_mib", "garbage_mib_s", "name", "size_classes", "long_lived_every",
     "finalizer_fraction", "large_fraction", "other"]), _value, max_size=9))
def test_fuzzed_phases_parse_or_fail_by_name(phase: dict) -> None:
    """Any phase table either makes a valid schedule or a ScenarioError — nothing else."""
    import msgspec

    data = {"scenario": {"name": "f", "heap_mib": 16384}, "phase": [phase]}
    try:
        sc = msgspec.convert(data, s.Scenario)
    except msgspec.ValidationError:
        return
    try:
        sc.check()
    except ScenarioError:
        return
    st_ = Schedule(sc).at(0.5)
    assert st_.live_bytes >= 0 and not math.isnan(st_.live_bytes)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=400))
def test_fuzzed_toml_text_never_escapes_as_anything_else(text: str) -> None:
    with contextlib.suppress(ScenarioError):
        s.parse(text)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=20), st.integers(min_value=4300, max_value=6000))
def test_huge_numbers_and_deep_nesting(depth: int, digits: int) -> None:
    with pytest.raises(ScenarioError):
        s.parse(GOOD.replace("seconds = 3", "seconds = " + "9" * digits))
    with pytest.raises(ScenarioError):
        s.parse(GOOD.replace("live_mib = 5", "live_mib = " + "[" * depth + "]" * depth))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_to_toml_round_trips_any_description(text: str) -> None:
    """The daemon is handed ``to_toml()``: control characters, DEL, quotes, backslashes and
    astral characters in a description must come back as they were."""
    import msgspec

    sc = s.parse(GOOD)
    sc = msgspec.structs.replace(sc, scenario=msgspec.structs.replace(sc.scenario,
                                                                      description=text))
    assert s.parse(sc.to_toml()) == sc


def test_asked_bytes_counts_garbage_growth_and_rises_but_never_a_fall() -> None:
    """spike-then-idle asks 6 s × 128 + 512 (the ramp), 4 × 128 (peak), 4 × 128 (drain: the
    fall frees, asks nothing), 26 × 2 (idle) MiB."""
    sc = s.parse(s.shipped()["spike-then-idle"])
    assert sc.asked_bytes(0, sc.seconds) == pytest.approx((768 + 512 + 512 + 512 + 52) * MIB)
    assert sc.asked_bytes(3, 7) == pytest.approx(((128 + 512 / 6) * 3 + 128) * MIB)
    assert sc.asked_bytes(5, 5) == 0
    step = s.parse('[scenario]\nname = "x"\nheap_mib = 512\n[[phase]]\nseconds = 1\n'
                   'live_mib = 10\n[[phase]]\nseconds = 1\nlive_mib = 50\ngarbage_mib_s = 4\n')
    assert step.asked_bytes(0, 2) == pytest.approx((10 + 40 + 4) * MIB)  # both rises
    assert step.asked_bytes(0.5, 1.5) == pytest.approx((40 + 2) * MIB)
    assert step.asked_bytes(1.5, 2) == pytest.approx(2 * MIB)  # the rise came before
    storm = s.parse(s.shipped()["alloc-storm"])
    assert storm.asked_bytes(0, storm.seconds) is None  # "max": no figure
    with pytest.raises(AssertionError):
        sc.asked_bytes(2, 1)
