"""GOGC off (issue 18): ``gogc = "off"`` / ``-1`` in the config and in scenarios, meaningful only
with a memory limit; the goal is then the limit's alone (Go's mgcpacer.go heapGoalInternal with
gcPercent < 0), so cycles come only as the heap nears the limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeperd.daemon import config
from sweeperd.pacing import gcpace
from sweeperd.workload import scenario as s

CASES = Path(__file__).parent / "data" / "cases"  # copies of /work/shared/cases
MIB = 1 << 20
SCENARIO = """
[scenario]
name = "off"
heap_mib = 1024
gogc = {gogc}
{limit}

[[phase]]
seconds = 4
live_mib = 200
garbage_mib_s = 64
"""


def _scenario(gogc: str, limit: str = "memory_limit_mib = 400") -> str:
    return SCENARIO.format(gogc=gogc, limit=limit)


@given(live=st.integers(0, 1 << 40), limit=st.integers(1 << 20, 1 << 40),
       min_goal=st.integers(1, 1 << 34))
def test_gogc_off_goal_is_the_limit_goal_whatever_the_live_heap(live, limit, min_goal):
    goal = gcpace.heap_goal(live, gcpace.GOGC_OFF, min_goal, limit)
    assert goal == gcpace.memory_limit_goal(limit)
    # a cycle starts only past live + 90% of the way to that goal: near the limit
    assert gcpace.trigger(live, goal) >= min(live, goal)


def test_gogc_off_collects_only_near_the_limit_where_gogc_100_collects_at_twice_live():
    live, limit = 200 * MIB, 400 * MIB
    t_off = gcpace.trigger(live, gcpace.heap_goal(live, gcpace.GOGC_OFF, 4 * MIB, limit))
    t_100 = gcpace.trigger(live, gcpace.heap_goal(live, 100, 4 * MIB))
    assert t_off > 0.9 * limit - 1 and t_off < limit  # 369 MiB of a 400 MiB limit
    assert t_100 == live + int(0.9 * live)
    small = gcpace.heap_goal(10 * MIB, gcpace.GOGC_OFF, 4 * MIB, limit)
    assert small == 388 * MIB  # not 20 MiB: GOGC's goal is gone, and so is its minimum


@pytest.mark.parametrize("v,want", [("off", -1), ("OFF", -1), (-1, -1), (-7, -1), (100, 100)])
def test_gogc_percent_reads_off_like_go_s_readgogc(v, want):
    assert gcpace.gogc_percent(v) == want
    assert gcpace.gogc_text(want) == ("off" if want < 0 else want)


def test_gogc_percent_refuses_other_strings():
    with pytest.raises(ValueError, match="off"):
        gcpace.gogc_percent("of")


# --- the config -------------------------------------------------------------------------------

def test_the_case_config_file_is_accepted_as_gogc_off():
    cfg = config.load(CASES / "config-gogc-off.toml")
    assert cfg.gc.gogc == gcpace.GOGC_OFF and cfg.scavenger.memory_limit_mib == 400


@pytest.mark.parametrize("v", ['"off"', "-1"])
@pytest.mark.parametrize("limit", ["400", '"cgroup"'])
def test_gogc_off_with_a_limit_is_accepted(tmp_path, v, limit):
    p = tmp_path / "c.toml"
    p.write_text(f"[gc]\ngogc = {v}\n[scavenger]\nmemory_limit_mib = {limit}\n")
    assert config.load(p).gc.gogc == -1


@pytest.mark.parametrize("v", ['"off"', "-1"])
def test_gogc_off_without_a_limit_is_refused_naming_both_keys(tmp_path, v):
    p = tmp_path / "c.toml"
    p.write_text(f"[gc]\ngogc = {v}\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert "gc.gogc" in str(e.value) and "scavenger.memory_limit_mib" in str(e.value)
    p.write_text(f"[gc]\ngogc = {v}\n[scavenger]\nmemory_limit_mib = 0\n")
    with pytest.raises(config.ConfigError, match=r"scavenger\.memory_limit_mib"):
        config.load(p)


@pytest.mark.parametrize("v", ['"of"', '"Off "', "-2", "0", "9", "1001", "-1.0", "true", '""'])
def test_other_gogc_values_are_refused_naming_the_key(tmp_path, v):
    p = tmp_path / "c.toml"
    p.write_text(f"[gc]\ngogc = {v}\n[scavenger]\nmemory_limit_mib = 400\n")
    with pytest.raises(config.ConfigError, match=r"gc\.gogc"):
        config.load(p)


def test_config_check_refuses_gogc_off_without_a_limit_with_exit_2(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[gc]\ngogc = "off"\n')
    r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "config", "check", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "scavenger.memory_limit_mib" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "config", "check",
                        str(CASES / "config-gogc-off.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_gogc_off_scenario_brings_gogc_off_and_its_limit_into_the_config():
    cfg = config.from_dict({"mutators": {"scenario": str(CASES / "scenario-gogc-off.toml")}})
    assert cfg.gc.gogc == -1 and cfg.scavenger.memory_limit_mib == 400


# --- scenarios --------------------------------------------------------------------------------

def test_the_case_scenario_is_accepted():
    sc = s.load(str(CASES / "scenario-gogc-off.toml"))
    assert sc.scenario.gogc == "off" and sc.scenario.memory_limit_mib == 400


@pytest.mark.parametrize("v", ['"off"', "-1"])
def test_a_scenario_with_gogc_off_round_trips_and_scales_keeping_a_limit(v):
    sc = s.parse(_scenario(v))
    assert s.parse(sc.to_toml()) == sc
    tiny = sc.scaled(0.001)  # 400 MiB * 0.001 rounds to 0: a limit scaled stays a limit
    assert tiny.scenario.memory_limit_mib == 1


@pytest.mark.parametrize("v", ['"off"', "-1"])
@pytest.mark.parametrize("limit", ["", "memory_limit_mib = 0"])
def test_a_scenario_with_gogc_off_and_no_limit_is_refused_naming_both_keys(v, limit):
    with pytest.raises(s.ScenarioError) as e:
        s.parse(_scenario(v, limit))
    assert "gogc" in str(e.value) and "memory_limit_mib" in str(e.value)


@pytest.mark.parametrize("v", ['"of"', "-2", "0", "9", "1001", "1.5", "true"])
def test_other_scenario_gogc_values_are_refused_naming_the_field(v):
    with pytest.raises(s.ScenarioError, match="gogc"):
        s.parse(_scenario(v))


def test_the_cycle_machine_with_gogc_off_sets_the_limit_s_goal_after_every_mark():
    """From the first goal to the goal after a mark that found 10 MiB live: the limit's
    (388 MiB of 400), where GOGC 100 would set 20 MiB."""
    from sweeperd.daemon import cycle as c
    from sweeperd.daemon.events import Role, Slot

    mut = Slot(Role.MUTATOR, 0)
    m = c.GCCycle(c.Params(gogc=gcpace.GOGC_OFF, min_goal_bytes=4 * MIB, nsweepers=1,
                           memory_limit_bytes=400 * MIB, trigger_check_s=0, dead_after_s=1e9,
                           start_after_s=1e9), sweepgen=4)
    assert m.goal_bytes == 388 * MIB
    m.handle(c.Started(mut, 0.0))
    m.handle(c.Hello(mut, 0.0))
    m.handle(c.Tick(1.0))
    assert not any(isinstance(a, c.SendMark)  # 300 MiB of objects: under the trigger
                   for a in m.handle(c.HeapMeasured(300 * MIB, 1 << 40, 1 << 41)))
    m.handle(c.Tick(2.0))
    assert any(isinstance(a, c.SendMark)  # 380 MiB: past live + 90% of the way to 388 MiB
               for a in m.handle(c.HeapMeasured(380 * MIB, 1 << 40, 1 << 41)))
    m.handle(c.Marked(mut, m.sweepgen + 2, 2.1, 10 * MIB))
    m.handle(c.LiveMeasured(10 * MIB, 10))
    assert m.goal_bytes == 388 * MIB and m.trigger_bytes == gcpace.trigger(10 * MIB, 388 * MIB)
