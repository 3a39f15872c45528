"""Daemon-wide counters from workers' cumulative reports: only growing, restarts from zero."""

from sweeperd.daemon.events import Role, Slot
from sweeperd.daemon.totals import SWEEP_PHASE_BUCKETS, Totals
from sweeperd.runtime.scavenge import Released


def test_cumulative_reports_add_their_differences_and_a_replacement_starts_from_zero():
    t = Totals()
    m0 = Slot(Role.MUTATOR, 0)
    t.mutator_report(m0, {"objects_allocated": 100, "spans_swept": 3, "live_objects": 50})
    t.mutator_report(m0, {"objects_allocated": 250, "spans_swept": 5, "live_objects": 10})
    assert t.mutator["objects_allocated"] == 250 and t.swept["mutator"].spans == 5
    assert "live_objects" not in t.mutator
    t.died(m0)
    t.mutator_report(m0, {"objects_allocated": 40, "spans_swept": 1})
    assert t.mutator["objects_allocated"] == 290 and t.swept["mutator"].spans == 6
    assert t.deaths["mutator"] == 1


def test_scavenger_gauges_are_kept_and_coordinator_releases_counted():
    t = Totals()
    s = Slot(Role.SCAVENGER, 0)
    t.scavenger_report(s, {"released_pages": 10, "sleep_ratio": 0.5, "madvise_REMOVE": 2})
    t.scavenger_report(s, {"released_pages": 12, "sleep_ratio": 0.25, "madvise_REMOVE": 3})
    t.coordinator_released(Released(pages=4, runs=1, kernel_bytes=8192), {"REMOVE": 1})
    assert t.scavenger["released_pages"] == 16 and t.scavenger["sleep_ratio"] == 0.25
    assert t.madvise_calls() == {"REMOVE": 4}


def test_sweep_phase_histogram_is_cumulative():
    t = Totals()
    for sec in (0.0005, 0.003, 0.003, 20.0):
        t.sweep_phase_seconds(sec)
    h = t.freeze()["sweep_phase"]
    assert h.total == 4 and h.counts[0] == 1
    assert h.counts[SWEEP_PHASE_BUCKETS.index(0.005)] == 3 and h.counts[-1] == 3
    assert list(h.counts) == sorted(h.counts)
