"""sweeperd soak: the growth it reports is measured after the warm-up, per process, and a
replaced process is compared with itself; live, against a real daemon."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from sweeperd.daemon.soak import watch

from .daemon import Daemon


def _status(pid: int, anon_mib: float, fds: int) -> dict:
    return {"cycle": 1, "deaths": {"sweeper": 0}, "memory": {"processes": [
        {"role": "sweeper", "id": 0, "pid": pid, "anon_bytes": int(anon_mib * 2**20),
         "fds": fds, "cpu_seconds": 2 * anon_mib}]}}


def test_growth_is_after_the_warmup_and_per_incarnation():
    now = [0.0]
    seq = iter([_status(10, 20, 18), _status(10, 30, 18), _status(10, 31, 18),
                _status(10, 31.5, 19), _status(11, 50, 18), _status(11, 50.25, 18)])

    def sleep(dt: float) -> None:
        now[0] += dt

    out = io.StringIO()
    s = watch(lambda: next(seq), duration_s=150, every_s=30, out=out, as_json=True,
              clock=lambda: now[0], sleep=sleep)
    p = s["processes"]["sweeper0"]
    assert s["samples"] == 6 and json.loads(out.getvalue()) == s
    # pid 11 replaced pid 10 at t=120: compared with its own first sample
    assert p["anon_mib_start"] == 50 and p["anon_growth_mib"] == 0.25 and p["watched_s"] == 30
    assert p["cpu_seconds"] == 0.5 and p["cpu_share"] == 0.017  # its own CPU over 30 s


def test_the_trend_sees_a_leak_through_a_live_set_that_moves():
    """A live set swinging by 40 MiB with no trend, against a steady 6 MiB an hour leak: the
    end-minus-start figure cannot tell them apart, the slope does."""
    now = [0.0]

    def sleep(dt: float) -> None:
        now[0] += dt

    def run(anon):
        seq = iter([_status(10, anon(i), 18) for i in range(200)])
        return watch(lambda: next(seq), duration_s=30 * 150, every_s=30, out=io.StringIO(),
                     as_json=True, clock=lambda: now[0], sleep=sleep)["processes"]["sweeper0"]

    swing = run(lambda i: 100 + (40 if i % 2 else 0))
    leak = run(lambda i: 100 + i * 30 * 6 / 3600)
    assert abs(swing["anon_slope_mib_per_h"]) < 1.0
    assert leak["anon_slope_mib_per_h"] == pytest.approx(6.0, abs=0.05)
    # the floor and the median of the last window against the first: flat for the swing,
    # up by the leak's hour (4,470 s watched, windows of 300 s) for the leak
    assert swing["anon_floor_growth_mib"] == 0 and swing["anon_median_growth_mib"] == 0
    assert leak["anon_floor_growth_mib"] == pytest.approx(6.0 * (4470 - 300) / 3600, abs=0.1)
    assert leak["anon_median_growth_mib"] == pytest.approx(6.0 * (4470 - 300) / 3600, abs=0.1)


def test_scrapes_are_timed_and_reported_as_percentiles():
    now = [0.0]
    costs = iter([1.0, 2.0, 3.0, 4.0, 50.0] * 2)

    def scrape() -> None:
        now[0] += next(costs) / 1e3

    def sleep(dt: float) -> None:
        now[0] += dt

    s = watch(lambda: _status(10, 20, 18), duration_s=30, every_s=30, out=io.StringIO(),
              clock=lambda: now[0], sleep=sleep, scrape=scrape)
    assert s["scrapes"] == 10
    assert abs(s["scrape_ms_p50"] - 3.0) < 1e-6 and abs(s["scrape_ms_p99"] - 50.0) < 1e-6


def test_samples_keep_to_their_grid_when_a_sample_is_slow():
    """Every 0.5 s for 3 s: samples costing 0.3 s start on the grid (0, 0.5, ... 3.0), and one
    costing 1.2 s skips the ticks it overran, without shifting the rest."""
    def times(costs: list[float]) -> list[float]:
        now, seen = [0.0], []
        cost = iter(costs)

        def status() -> dict:
            seen.append(now[0])
            now[0] += next(cost)
            return _status(10, 20, 18)

        def sleep(dt: float) -> None:
            assert dt >= 0
            now[0] += dt

        watch(status, duration_s=3, every_s=0.5, out=io.StringIO(), as_json=True,
              clock=lambda: now[0], sleep=sleep)
        return [round(t, 6) for t in seen]

    assert times([0.3] * 7) == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    assert times([0.1, 1.2] + [0.1] * 5) == [0, 0.5, 2, 2.5, 3]


def test_soak_command_against_a_live_daemon():
    d = Daemon("--heap-mib", "32", "--sweepers", "1", "--mutators", "1")
    try:
        d.wait_for(lambda s: s["cycle"] >= 1, what="a cycle")
        r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "soak", "--control",
                            d.control, "--duration", "2", "--every", "0.5", "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["samples"] >= 2 and s["cycles"] >= 1  # (at 0 and 2 s, and the ticks between
        # that a loaded machine's slower samples left: test_samples_keep_to_their_grid...)
        assert s["scrapes"] == 5 * s["samples"] and 0 < s["scrape_ms_p50"] <= s["scrape_ms_p99"]
        assert set(s["processes"]) == {"coordinator0", "sweeper0", "mutator0", "scavenger0"}
        for p in s["processes"].values():
            assert p["anon_mib_end"] > 1 and p["fds_end"] > 3
        assert s["processes"]["mutator0"]["cpu_seconds"] > 0  # it allocates flat out
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize("flag", ["--every", "--duration"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_soak_refuses_a_period_or_duration_not_positive_and_finite(flag: str, value: str):
    r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "soak", "--control",
                        "ipc:///nonexistent/control", flag, value],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "must be positive and finite" in r.stderr, r.stderr
