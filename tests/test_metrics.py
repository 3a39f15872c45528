"""The metrics endpoint reads only the published snapshot: it answers every scrape while the
main loop kills, recovers and replaces workers underneath it; and what it serves is the
snapshot's."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request

from sweeperd.daemon.metrics import Kernel, SnapshotCollector
from sweeperd.daemon.snapshot import Sample, Snapshot, WorkerView
from sweeperd.daemon.totals import Totals
from sweeperd.runtime.heapstats import Books, HeapStats, ReleaseTally, Tallies
from sweeperd.wire.protocol import MutatorStats

from .daemon import Daemon


def test_1000_scrapes_all_answered_while_workers_are_killed_and_replaced():
    d = Daemon("--heap-mib", "64", "--sweepers", "2", "--mutators", "2")
    codes: list[int | str] = []
    kills_done = threading.Event()

    def scrape() -> None:  # 1000 at least, and on until the kills are over
        while len(codes) < 1000 or not kills_done.is_set():
            try:
                with urllib.request.urlopen(d.metrics, timeout=10) as r:
                    r.read()
                    codes.append(r.status)
            except Exception as e:  # every failure is recorded, and asserted below
                codes.append(repr(e))

    try:
        t = threading.Thread(target=scrape, daemon=True)
        t.start()
        # each victim once: a killed worker is listed alive until the daemon reaps it, and a
        # second SIGKILL to it (a zombie) succeeds without a second death
        killed: set[int] = set()
        end = time.monotonic() + 600
        while len(killed) < 12:
            assert time.monotonic() < end, f"{len(killed)} kills in 600 s"
            st = d.status()
            ws = [w for w in st["workers"] if w["state"] == "alive" and w["pid"] not in killed]
            victim = ws[len(killed) % len(ws)] if ws else None
            if victim:
                try:
                    os.kill(victim["pid"], signal.SIGKILL)
                    killed.add(victim["pid"])
                except ProcessLookupError:
                    pass
            time.sleep(0.15)
        kills_done.set()
        t.join(600)  # the scrapes' end, however slow a loaded machine makes them
        assert not t.is_alive(), f"{len(codes)} of 1000 scrapes answered in 600 s"
        # every kill is a death once the daemon has reaped it: wait for that, not a moment
        st = d.wait_for(lambda s: s["workers_alive"] == 5
                        and sum(s["deaths"].values()) >= len(killed), timeout=120,
                        what="every kill counted and every worker replaced")
        assert len(codes) >= 1000 and set(codes) == {200}, [c for c in codes if c != 200][:5]
        assert len(killed) == 12
        assert d.stop() == 0
    finally:
        kills_done.set()
        d.close()


def _snapshot(**over) -> Snapshot:
    t = Totals()
    t.control_error("not_json")
    base = dict(at=time.monotonic(), pid=1, cycle=7, sweepgen=18, phase="sweep",
                goal_bytes=10 << 20, trigger_bytes=9 << 20, retain_goal_bytes=11 << 20,
                workers=(WorkerView("sweeper", 0, 2, "alive"),
                         WorkerView("mutator", 0, 3, "starting")),
                debug={}, cpu_fraction_target=0.01, policy="eager", policy_params={},
                tallies=Tallies(on_free=ReleaseTally(40, 4, 40 * 8192, (4, 0, 0, 0, 0, 0)),
                                freed_pages=100),
                heap_handle={}, control_addr="", ipc_dir="", metrics_addr="", live_bytes=5 << 20,
                scenario={}, **t.freeze())
    base.update(over)
    return Snapshot(**base)


def test_collector_serves_the_snapshot_it_is_given():
    snap = _snapshot()
    hs = HeapStats(64 << 20, 8 << 20, 5 << 20, 3 << 20, 1 << 20, 2 << 20, 10, 1 << 20)
    col = SnapshotCollector(lambda: snap, lambda: Sample(time.monotonic(), []),
                            Kernel(lambda: 123, lambda: 45, lambda: 6,
                                   lambda: Books(hs, 3 << 12, 5 << 12, 7 << 12)))
    got = {s.name + str(sorted(s.labels.items())): s.value
           for m in col.collect() for s in m.samples}
    assert got["sweeperd_gc_cycles_total[]"] == 7
    assert got["sweeperd_heap_goal_bytes[]"] == 10 << 20
    assert got["sweeperd_heap_backed_bytes[]"] == 123
    assert got["sweeperd_heap_fragmentation_bytes[]"] == 1 << 20
    assert got["sweeperd_heap_releasing_bytes[]"] == 3 << 12
    assert got["sweeperd_heap_cached_bytes[]"] == 5 << 12
    assert got["sweeperd_heap_committing_bytes[]"] == 7 << 12
    assert got["sweeperd_workers[('role', 'sweeper'), ('state', 'alive')]"] == 1
    assert got["sweeperd_workers[('role', 'mutator'), ('state', 'starting')]"] == 1
    assert got["sweeperd_control_errors_total[('reason', 'not_json')]"] == 1
    assert got["sweeperd_sweep_phase_seconds_count[]"] == 0
    assert got["sweeperd_scavenge_policy_info[('policy', 'eager')]"] == 1
    # the freers' own releases (eager) are in the totals
    assert got["sweeperd_scavenge_released_bytes_total[]"] == 40 * 8192
    assert got["sweeperd_scavenge_released_on_free_bytes_total[]"] == 40 * 8192
    assert got["sweeperd_scavenge_advised_bytes_total[]"] == 40 * 8192
    assert got["sweeperd_heap_freed_bytes_total[]"] == 100 * 8192
    assert got["sweeperd_madvise_calls_total[('advice', 'REMOVE')]"] == 4


def test_the_sampler_spaces_out_samples_that_cost_much():
    """A sample that costs 0.1 s (PSS of a process that touched 16 GiB) is taken every 5 s,
    not every second: the sampler keeps within 1/50 of a core.  A cheap one: every second."""
    from sweeperd.daemon.metrics import SAMPLE_S, Sampler

    now = [0.0]
    cost = [0.1]

    def take():
        now[0] += cost[0]
        return object()

    s = Sampler(take, clock=lambda: now[0])  # type: ignore[arg-type]
    assert s.wait_s == 50 * 0.1
    cost[0] = 0.001
    s.latest = s._take()
    assert s.wait_s == SAMPLE_S


def test_a_sample_that_waits_without_working_keeps_the_sampling_period():
    """The cost that stretches the period is the sampler thread's CPU time: a sample that
    spends 0.3 s waiting (as for a core, on a loaded machine) and no CPU keeps the 1 s period,
    where the wall clock would have made it 15 s."""
    from sweeperd.daemon.metrics import SAMPLE_S, Sampler

    def take():
        time.sleep(0.3)
        return object()

    s = Sampler(take)  # type: ignore[arg-type]
    assert s.wait_s == SAMPLE_S


def test_refill_histogram_and_scenario_series():
    """The mutators' refill buckets (non-cumulative, summed over mutators) become a cumulative
    Prometheus histogram; a scenario's series appear only with a scenario."""
    from sweeperd.workload.mutator import ALLOC_BUCKETS

    counts = [0] * (len(ALLOC_BUCKETS) + 1)
    counts[0], counts[3], counts[len(ALLOC_BUCKETS)] = 5, 2, 1  # one above every bound
    mutator = MutatorStats(refill_buckets=tuple(counts), refills=8, refill_seconds=2.5)
    snap = _snapshot(mutator=mutator, scenario={
        "name": "steady", "elapsed_s": 3.5, "seconds": 30.0, "phase": 1, "phase_name": "hold",
        "target_live_bytes": 7 << 20, "start_s": 1.25})
    hs = HeapStats(64 << 20, 8 << 20, 5 << 20, 3 << 20, 1 << 20, 2 << 20, 10, 1 << 20)
    col = SnapshotCollector(lambda: snap, lambda: Sample(time.monotonic(), []),
                            Kernel(lambda: 123, lambda: 45, lambda: 6,
                                   lambda: Books(hs, 3 << 12, 5 << 12, 7 << 12)))
    got = {s.name + str(sorted(s.labels.items())): s.value
           for m in col.collect() for s in m.samples}
    b = "sweeperd_mutator_alloc_seconds_bucket"
    assert got[f"{b}[('le', '1e-05')]"] == 5
    assert got[f"{b}[('le', '0.0001')]"] == 7  # cumulative
    assert got[f"{b}[('le', '1.0')]"] == 7
    assert got[f"{b}[('le', '+Inf')]"] == 8 == got["sweeperd_mutator_alloc_seconds_count[]"]
    assert got["sweeperd_mutator_alloc_seconds_sum[]"] == 2.5
    assert got["sweeperd_scenario_info[('phase', 'hold'), ('scenario', 'steady')]"] == 1
    assert got["sweeperd_scenario_target_live_bytes[]"] == 7 << 20
    assert got["sweeperd_scenario_start_seconds[]"] == 1.25
    assert got["sweeperd_heap_live_bytes[]"] == 5 << 20
    plain = {m.name for m in SnapshotCollector(
        lambda: _snapshot(), lambda: Sample(time.monotonic(), []),
        Kernel(lambda: 123, lambda: 45, lambda: 6,
                                   lambda: Books(hs, 3 << 12, 5 << 12, 7 << 12))).collect()}
    assert "sweeperd_scenario_info" not in plain


# Every family a scrape serves, with a scenario and every policy figure present: the names
# the README's table and the dashboards use (taken from a scrape before the stats were typed).
_NAMES = """
sweeperd_gc_cycles_total sweeperd_gc_limiter_enabled_seconds_total sweeperd_gc_gogc
sweeperd_sweep_spans_total sweeperd_sweep_pages_total
sweeperd_sweep_objects_freed_total sweeperd_sweep_phase_seconds sweeperd_finalizers_run_total
sweeperd_mutator_objects_allocated_total sweeperd_mutator_allocated_bytes_total
sweeperd_mutator_alloc_seconds sweeperd_scenario_info sweeperd_scenario_elapsed_seconds
sweeperd_scenario_start_seconds sweeperd_scenario_target_live_bytes
sweeperd_memory_sample_age_seconds sweeperd_heap_objects_bytes sweeperd_heap_unused_bytes
sweeperd_heap_free_bytes sweeperd_heap_goal_bytes sweeperd_heap_live_bytes
sweeperd_heap_size_bytes sweeperd_heap_releasing_bytes sweeperd_heap_cached_bytes
sweeperd_heap_committing_bytes sweeperd_sweep_engine_info
sweeperd_heap_released_bytes sweeperd_heap_fragmentation_bytes sweeperd_heap_backed_bytes
sweeperd_heap_metadata_backed_bytes sweeperd_system_shmem_bytes
sweeperd_process_resident_bytes sweeperd_process_pss_bytes
sweeperd_scavenge_released_bytes_total sweeperd_scavenge_advised_bytes_total
sweeperd_scavenge_retain_goal_bytes sweeperd_scavenge_cpu_seconds_total
sweeperd_scavenge_cpu_fraction_target sweeperd_machine_cpus sweeperd_scavenge_policy_info
sweeperd_scavenge_released_on_free_bytes_total
sweeperd_scavenge_released_on_free_cpu_seconds_total sweeperd_scavenge_assist_released_bytes_total
sweeperd_scavenge_assist_cpu_seconds_total sweeperd_heap_freed_bytes_total
sweeperd_heap_commit_failures_total sweeperd_scavenge_policy_decay_npages_limit
sweeperd_scavenge_policy_hugepage_kept_bytes
sweeperd_scavenge_policy_purge_delay_expired_pages
sweeperd_scavenge_policy_release_rate_counter_pages sweeperd_madvise_calls_total
sweeperd_workers sweeperd_worker_deaths_total sweeperd_worker_memory_deaths_total
sweeperd_control_errors_total sweeperd_control_requests_total sweeperd_internal_errors_total
"""
SCRAPE_NAMES = frozenset(_NAMES.split())


def test_a_scrapes_metric_names_and_typed_figures_are_unchanged():
    """The workers' typed stats reach the exposition under the names they always had: the
    families, the policy figures as ``sweeperd_scavenge_policy_<name>``, the role labels."""
    import re

    from prometheus_client import CollectorRegistry, generate_latest

    from sweeperd.daemon.events import Role, Slot
    from sweeperd.wire.protocol import PolicyFigures, ScavengerStats

    t = Totals()
    t.mutator_report(Slot(Role.MUTATOR, 0), MutatorStats(refills=3, refill_seconds=0.5))
    t.scavenger_report(ScavengerStats(vectored=True, policy=PolicyFigures(
        decay_npages_limit=3.0, release_rate_counter_pages=4.0, purge_delay_expired_pages=5.0,
        hugepage_kept_bytes=6.0)))
    t.died(Slot(Role.SWEEPER, 1))
    snap = _snapshot(**t.freeze(), scenario={
        "name": "steady", "elapsed_s": 3.5, "seconds": 30.0, "phase": 1, "phase_name": "hold",
        "target_live_bytes": 7 << 20, "start_s": 1.25})
    hs = HeapStats(64 << 20, 8 << 20, 5 << 20, 3 << 20, 1 << 20, 2 << 20, 10, 1 << 20)
    procs = [{"role": Role.SWEEPER, "id": 0, "pid": 2, "rss_bytes": 5, "pss_bytes": 4}]
    reg = CollectorRegistry()
    reg.register(SnapshotCollector(lambda: snap, lambda: Sample(time.monotonic(), procs),
                                   Kernel(lambda: 123, lambda: 45, lambda: 6,
                                   lambda: Books(hs, 3 << 12, 5 << 12, 7 << 12))))
    body = generate_latest(reg).decode()
    assert set(re.findall(r"^# TYPE (\S+) ", body, flags=re.M)) == SCRAPE_NAMES
    for line in ("sweeperd_scavenge_policy_hugepage_kept_bytes 6.0",
                 "sweeperd_mutator_alloc_seconds_count 3.0",
                 "sweeperd_mutator_alloc_seconds_sum 0.5",
                 'sweeperd_worker_deaths_total{role="sweeper"} 1.0',
                 'sweeperd_workers{role="scavenger",state="alive"} 0.0',
                 'sweeperd_process_pss_bytes{id="0",role="sweeper"} 4.0'):
        assert line in body.splitlines(), line
