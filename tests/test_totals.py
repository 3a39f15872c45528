"""Daemon-wide counters from workers' cumulative reports: only growing, restarts from zero.
(What workers do to the heap is in its tallies: tests/test_tallies.py.)"""

from sweeperd.daemon.events import Role, Slot
from sweeperd.daemon.totals import SWEEP_PHASE_BUCKETS, Totals


def test_cumulative_reports_add_their_differences_and_a_replacement_starts_from_zero():
    t = Totals()
    m0 = Slot(Role.MUTATOR, 0)
    t.mutator_report(m0, {"oom_waits": 100, "refills": 3, "live_objects": 50})
    t.mutator_report(m0, {"oom_waits": 250, "refills": 5, "live_objects": 10})
    assert t.mutator["oom_waits"] == 250 and t.mutator["refills"] == 5
    assert "live_objects" not in t.mutator
    t.died(m0)
    t.mutator_report(m0, {"oom_waits": 40, "refills": 1})
    assert t.mutator["oom_waits"] == 290 and t.mutator["refills"] == 6
    assert t.deaths["mutator"] == 1


def test_scavenger_gauges_are_kept_as_reported():
    t = Totals()
    t.scavenger_report({"sleep_ratio": 0.5, "vectored": 1, "policy_x": 3})
    t.scavenger_report({"sleep_ratio": 0.25, "vectored": 1, "policy_x": 2})
    assert dict(t.freeze()["scavenger"]) == {"sleep_ratio": 0.25, "vectored": 1, "policy_x": 2}


def test_sweep_phase_histogram_is_cumulative():
    t = Totals()
    for sec in (0.0005, 0.003, 0.003, 20.0):
        t.sweep_phase_seconds(sec)
    h = t.freeze()["sweep_phase"]
    assert h.total == 4 and h.counts[0] == 1
    assert h.counts[SWEEP_PHASE_BUCKETS.index(0.005)] == 3 and h.counts[-1] == 3
    assert list(h.counts) == sorted(h.counts)
