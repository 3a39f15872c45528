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
from sweeperd.runtime.heapstats import HeapStats, ReleaseTally, Tallies

from .daemon import Daemon


def test_1000_scrapes_all_answered_while_workers_are_killed_and_replaced():
    d = Daemon("--heap-mib", "64", "--sweepers", "2", "--mutators", "2")
    codes: list[int | str] = []
    done = threading.Event()

    def scrape() -> None:
        while len(codes) < 1000:
            try:
                with urllib.request.urlopen(d.metrics, timeout=10) as r:
                    r.read()
                    codes.append(r.status)
            except Exception as e:  # every failure is recorded, and asserted below
                codes.append(repr(e))
        done.set()

    try:
        t = threading.Thread(target=scrape)
        t.start()
        # each victim once: a killed worker is listed alive until the daemon reaps it, and a
        # second SIGKILL to it (a zombie) succeeds without a second death
        killed: set[int] = set()
        while not done.is_set() and len(killed) < 12:
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
        t.join(600)  # the scrapes' end, however slow a loaded machine makes them
        assert not t.is_alive(), f"{len(codes)} of 1000 scrapes answered in 600 s"
        # every kill is a death once the daemon has reaped it: wait for that, not a moment
        st = d.wait_for(lambda s: s["workers_alive"] == 5
                        and sum(s["deaths"].values()) >= len(killed), timeout=120,
                        what="every kill counted and every worker replaced")
        assert len(codes) == 1000 and set(codes) == {200}, [c for c in codes if c != 200][:5]
        assert len(killed) >= 5
        assert d.stop() == 0
    finally:
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
                            Kernel(lambda: 123, lambda: 45, lambda: 6, lambda: hs))
    got = {s.name + str(sorted(s.labels.items())): s.value
           for m in col.collect() for s in m.samples}
    assert got["sweeperd_gc_cycles_total[]"] == 7
    assert got["sweeperd_heap_goal_bytes[]"] == 10 << 20
    assert got["sweeperd_heap_backed_bytes[]"] == 123
    assert got["sweeperd_heap_fragmentation_bytes[]"] == 1 << 20
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


def test_refill_histogram_and_scenario_series():
    """The mutators' refill buckets (non-cumulative, summed over mutators) become a cumulative
    Prometheus histogram; a scenario's series appear only with a scenario."""
    from sweeperd.workload.mutator import ALLOC_BUCKETS

    counts = [0] * (len(ALLOC_BUCKETS) + 1)
    counts[0], counts[3], counts[len(ALLOC_BUCKETS)] = 5, 2, 1  # one above every bound
    mutator = {f"refill_le_{i}": float(c) for i, c in enumerate(counts)}
    mutator.update(refills=8.0, refill_seconds=2.5)
    snap = _snapshot(mutator=mutator, scenario={
        "name": "steady", "elapsed_s": 3.5, "seconds": 30.0, "phase": 1, "phase_name": "hold",
        "target_live_bytes": 7 << 20, "start_s": 1.25})
    hs = HeapStats(64 << 20, 8 << 20, 5 << 20, 3 << 20, 1 << 20, 2 << 20, 10, 1 << 20)
    col = SnapshotCollector(lambda: snap, lambda: Sample(time.monotonic(), []),
                            Kernel(lambda: 123, lambda: 45, lambda: 6, lambda: hs))
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
        Kernel(lambda: 123, lambda: 45, lambda: 6, lambda: hs)).collect()}
    assert "sweeperd_scenario_info" not in plain
