"""Daemon-wide counters from workers' cumulative reports: only growing, restarts from zero.
(What workers do to the heap is in its tallies: tests/test_tallies.py.)"""

from sweeperd.daemon.events import Role, Slot
from sweeperd.daemon.totals import SWEEP_PHASE_BUCKETS, Totals
from sweeperd.wire.protocol import REFILL_BUCKETS, MutatorStats, PolicyFigures, ScavengerStats


def test_cumulative_reports_add_their_differences_and_a_replacement_starts_from_zero():
    t = Totals()
    m0 = Slot(Role.MUTATOR, 0)
    t.mutator_report(m0, MutatorStats(oom_waits=100, refills=3, live_objects=50,
                                      refill_buckets=_buckets(2, 1)))
    t.mutator_report(m0, MutatorStats(oom_waits=250, refills=5, live_objects=10,
                                      refill_buckets=_buckets(3, 2)))
    assert t.mutator.oom_waits == 250 and t.mutator.refills == 5
    assert t.mutator.refill_buckets == _buckets(3, 2)
    assert t.mutator.live_objects == 0  # a gauge: never summed
    t.died(m0)
    t.mutator_report(m0, MutatorStats(oom_waits=40, refills=1, refill_buckets=_buckets(1, 0)))
    t.mutator_report(Slot(Role.MUTATOR, 1), MutatorStats(refill_seconds=0.5, refills=1,
                                                         refill_buckets=_buckets(0, 1)))
    assert t.mutator.oom_waits == 290 and t.mutator.refills == 7
    assert t.mutator.refill_buckets == _buckets(4, 3) and t.mutator.refill_seconds == 0.5
    assert t.deaths[Role.MUTATOR] == 1 and t.freeze()["mutator"] is t.mutator


def _buckets(first: int, last: int) -> tuple[int, ...]:
    return (first,) + (0,) * (REFILL_BUCKETS - 2) + (last,)


def test_scavenger_gauges_are_kept_as_reported():
    t = Totals()
    t.scavenger_report(ScavengerStats(sleep_ratio=0.5, vectored=True,
                                      policy=PolicyFigures(decay_npages_limit=3)))
    last = ScavengerStats(sleep_ratio=0.25, vectored=True,
                          policy=PolicyFigures(decay_npages_limit=2))
    t.scavenger_report(last)
    assert t.freeze()["scavenger"] == last


def test_sweep_phase_histogram_is_cumulative():
    t = Totals()
    for sec in (0.0005, 0.003, 0.003, 20.0):
        t.sweep_phase_seconds(sec)
    h = t.freeze()["sweep_phase"]
    assert h.total == 4 and h.counts[0] == 1
    assert h.counts[SWEEP_PHASE_BUCKETS.index(0.005)] == 3 and h.counts[-1] == 3
    assert list(h.counts) == sorted(h.counts)
