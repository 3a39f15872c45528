"""bench storm (loadtest/storm.py): the storm phase's allocation rate of the daemon and of Go,
from one invocation's runs."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeperd.loadtest import storm
from sweeperd.workload import scenario as scenarios

from .test_loadtest import _need_go

pytestmark = pytest.mark.timeout(600)

TINY = """
[scenario]
name = "tiny-storm"
heap_mib = 256

[[phase]]
name = "fill"
seconds = 1.5
live_mib = [0, 16]
garbage_mib_s = 16

[[phase]]
name = "storm"
seconds = 4
live_mib = 16
garbage_mib_s = "max"

[[phase]]
name = "calm"
seconds = 1
live_mib = 16
garbage_mib_s = 2
"""


def test_the_window_is_the_phase_less_its_first_second() -> None:
    assert storm.phase_window(scenarios.load("alloc-storm")) == (4.0, 23.0)
    sc = scenarios.parse(TINY, "tiny")
    assert storm.phase_window(sc) == (2.5, 5.5)
    with pytest.raises(ValueError, match="has no phase 'ramp'"):
        storm.phase_window(sc, "ramp")
    with pytest.raises(ValueError, match="too short to measure"):
        storm.phase_window(sc, "fill")


def _rows(ts: list[float], rate: float, cycles_per_s: float) -> list[dict[str, float]]:
    return [{"scenario_elapsed_s": t, "allocated_bytes": 5e6 + rate * t,
             "gc_cycles": math.floor(cycles_per_s * t)} for t in ts]


def test_the_rate_is_the_counters_slope_inside_the_window() -> None:
    rows = _rows([0, 1, 2, 3, 4, 5, 6], 1e8, 10)
    rows[0]["allocated_bytes"] = 0  # outside the window: not read
    got = storm.phase_rate(rows, 1.0, 5.0)
    assert got == {"alloc_bytes_per_s": 1e8, "gc_cycles_per_s": 10.0, "seconds": 4.0}
    with pytest.raises(ValueError, match="fewer than two samples"):
        storm.phase_rate(rows, 2.5, 2.9)


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=2, max_size=50, unique=True),
       st.floats(1, 1e10))
def test_a_steady_counter_gives_its_rate_wherever_it_is_sampled(ts: list[float],
                                                                rate: float) -> None:
    ts = sorted(ts)
    if ts[-1] - ts[0] < 1e-3:
        return
    got = storm.phase_rate(_rows(ts, rate, 0), ts[0], ts[-1])
    assert got["alloc_bytes_per_s"] == pytest.approx(rate, rel=1e-6)


def test_storm_runs_the_daemon_and_go_and_reports_the_ratio(tmp_path: Path) -> None:
    _need_go()
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    err = io.StringIO()
    r = storm.storm(tmp_path / "out", seed=7, err=err, scenario=str(path))
    assert r["scenario"] == "tiny-storm" and r["window_s"] == [2.5, 5.5]
    assert len(r["runs"]) == 1 and len(r["go_runs"]) == 1
    ours, go = r["runs"][0], r["go_runs"][0]
    assert ours["alloc_bytes_per_s"] > 0 and go["alloc_bytes_per_s"] > 0
    assert go["gc_cycles_per_s"] > 0  # Go's GC ran in the storm
    assert r["ratio_to_go"] == pytest.approx(ours["alloc_bytes_per_s"]
                                             / go["alloc_bytes_per_s"])
    assert r["go_version"].startswith("go version go1.")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [x["policy"] for x in summary["runs"]] == ["go", "go-runtime"]
    assert "go-runtime: ok" in err.getvalue()
