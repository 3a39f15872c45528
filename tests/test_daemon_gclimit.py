"""Issue 18 on a real daemon: the GC CPU limiter engages on the shipped ``alloc-storm`` under a
memory limit below its live heap (marks back to back), and GOGC off paces by the limit alone.
Each waits for the event it asserts (generous deadlines, no timing assertions)."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

from sweeperd.pacing import gcpace

from .daemon import Daemon

MIB = 1 << 20


def _metric(d: Daemon, name: str) -> float:
    body = urllib.request.urlopen(d.metrics, timeout=10).read().decode()
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    assert m, f"{name} is not exported"
    return float(m.group(1))


def test_the_gc_cpu_limiter_engages_on_alloc_storm_with_a_memory_limit(tmp_path: Path):
    """alloc-storm holds 128 MiB live; a 64 MiB limit puts its goal (62 MiB) under the live
    heap, so every cycle is due at once and marks take most of the mutators' time: the limiter
    must cap them, and its counter rise above 0."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[heap]\nsize_mib = 512\n[mutators]\nscenario = "alloc-storm"\n'
                   "[scavenger]\nmemory_limit_mib = 64\n")
    d = Daemon("--config", str(cfg))
    try:
        assert _metric(d, "sweeperd_gc_limiter_enabled_seconds_total") == 0
        deadline = time.monotonic() + 180
        while (v := _metric(d, "sweeperd_gc_limiter_enabled_seconds_total")) <= 0:
            assert time.monotonic() < deadline, f"the limiter never engaged:\n{d.where()}"
            assert d.proc.poll() is None, d.where()
            time.sleep(0.5)
        assert v > 0
        assert d.status()["gc"]["limiter_enabled_seconds"] > 0
        assert _metric(d, "sweeperd_gc_gogc") == 100
        assert d.status()["heap"]["goal_bytes"] == gcpace.memory_limit_goal(64 * MIB)
    finally:
        assert d.stop() == 0


def test_gogc_off_runs_the_case_scenario_with_the_limit_s_goal(tmp_path: Path):
    """The case file (tests/data/cases/scenario-gogc-off.toml):
    GOGC off under a 400 MiB limit.  The daemon starts, and once a cycle has run its goal is
    the limit's (388 MiB), not GOGC's."""
    case = Path(__file__).parent / "data" / "cases" / "scenario-gogc-off.toml"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[heap]\nsize_mib = 512\n[mutators]\nscenario = "{case}"\n')
    d = Daemon("--config", str(cfg))
    try:
        st = d.wait_for(lambda s: s["cycle"] >= 1, timeout=180, what="a GC cycle")
        assert st["heap"]["goal_bytes"] == gcpace.memory_limit_goal(400 * MIB)
        assert st["gc"]["gogc"] == "off" and st["gc"]["memory_limit_bytes"] == 400 * MIB
        assert _metric(d, "sweeperd_gc_gogc") == -1
    finally:
        assert d.stop() == 0
