"""kill -9 of a scavenger and of a mutator at their fault points (real SIGKILLs, armed fail
points), recovered through the coordinator's own path (``HeapWork.recover``, as the daemon
runs it after reaping): nothing left half-released or cached, bits and counts exact, the
kernel's bytes right, finalizers queued once."""

from __future__ import annotations

import json
import signal
import time

import multiprocess as mp
import numpy as np
import pytest

from sweeperd.daemon.events import Role, Slot
from sweeperd.daemon.heapwork import HeapWork
from sweeperd.daemon.totals import Totals
from sweeperd.runtime import mheap, owners, specials
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import (
    F_ALLOC,
    PAGE_FREE,
    PAGE_SCAVENGING,
    SPAN_IN_USE,
    T_OBJECTS_ALLOCATED,
    T_OBJECTS_FREED,
    T_RELEASED_KERNEL_BYTES,
    Heap,
)
from sweeperd.runtime.heapstats import heap_stats, read_tallies, scan_heap_stats
from sweeperd.runtime.runs import runs
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys.sysmem import SysMem
from sweeperd.wire import protocol

from . import faultprocs
from .daemon import Daemon
from .heapgen import build

CTX = mp.get_context("spawn")


def _die_at(monkeypatch, tmp_path, point, target, *args):
    """Run ``target`` in a fresh process armed to die at ``point``; assert it died there."""
    monkeypatch.setenv("SWEEPERD_FAILPOINTS", point)
    monkeypatch.setenv("SWEEPERD_FAILPOINTS_DIR", str(tmp_path))
    p = CTX.Process(target=target, args=args)
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL, f"it did not die at {point}: exit {p.exitcode}"
    assert (tmp_path / point).exists()  # and it was that point that fired


def _sysmem(heap):
    return SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True)


def _backed_of(heap, mask):
    s, n = runs(mask)
    return heap.arena_region.backed_in(s * PAGE_SIZE, n * PAGE_SIZE)


@pytest.mark.parametrize("point", ["scavenge.taken", "scavenge.released"])
def test_scavenger_killed_mid_release_is_finished_by_the_coordinator(monkeypatch, tmp_path,
                                                                    point):
    with Heap.create(32 << 20) as heap:
        spans = [mheap.alloc_span(heap, 0, 16)[0] for _ in range(40)]
        for s in spans:  # write every page: the kernel backs them
            heap.arena[s * PAGE_SIZE:(s + 16) * PAGE_SIZE] = 0xA5
        mheap.free_spans(heap, np.array(spans[::2]))  # 20 free backed runs of 16 pages
        backed_free = 20 * 16 * PAGE_SIZE
        assert _backed_of(heap, (heap.page_span == PAGE_FREE) & (heap.scavenged == 0)) \
            == backed_free
        _die_at(monkeypatch, tmp_path, point, faultprocs.scavenger,
                json.dumps(heap.handle.to_dict()), 10_000)
        taken = heap.page_span == PAGE_SCAVENGING
        assert np.count_nonzero(taken) == 20 * 16  # it took every free backed page
        if point == "scavenge.released":  # the kernel let them go; the heap does not know
            assert _backed_of(heap, taken) == 0
        assert not heap.scavenged[taken].any()

        heap.me = owners.COORDINATOR  # as in the daemon
        totals = Totals()
        HeapWork(heap, _sysmem(heap), totals, debug_checks=False).recover(
            Slot(Role.SCAVENGER, 0))

        assert not (heap.page_span == PAGE_SCAVENGING).any()
        assert heap.scavenged[taken].all()  # exactly the taken pages became scavenged ...
        free = heap.page_span == PAGE_FREE
        assert not heap.scavenged[~free].any()
        assert _backed_of(heap, heap.scavenged != 0) == 0  # ... and hold no memory
        in_use = heap.page_span >= 0
        assert heap.arena_backed_bytes() == _backed_of(heap, in_use) == 20 * 16 * PAGE_SIZE
        # counted once, kernel bytes included, whoever counted them: the dead scavenger (it
        # had flagged its batch before its madvise) or the coordinator (it had not)
        t = read_tallies(heap).scavenger
        assert (t.pages, t.runs, t.kernel_bytes) == (20 * 16, 20, backed_free)
        who = owners.SCAVENGER if point == "scavenge.released" else owners.COORDINATOR
        assert heap.tallies[who, T_RELEASED_KERNEL_BYTES] == backed_free
        check_heap(heap)
        assert heap_stats(heap) == scan_heap_stats(heap)  # the counters stayed exact


@pytest.mark.parametrize("point", ["malloc.bits_set", "mutator.cached"])
def test_mutator_killed_mid_allocation_is_recovered_by_the_coordinator(monkeypatch, tmp_path,
                                                                      point):
    rng = np.random.default_rng(5)
    with Heap.create(32 << 20) as heap:
        build(heap, rng, 500, p_fin=0.2)  # marked, sweepgen += 2: the sweep has begun
        h = heap.sweepgen
        spans0 = heap.in_use_spans()
        nsweeps0 = heap.span_nsweeps[spans0].copy()
        # a mutator allocates mid-cycle (sweeping on demand, caching spans) and is killed
        _die_at(monkeypatch, tmp_path, point, faultprocs.mutator,
                json.dumps(heap.handle.to_dict()), 1000, 7)
        cached = np.isin(heap.span_sweepgen[heap.in_use_spans()], [h + 1, h + 3])
        assert cached.any(), "the mutator died holding no cached span"

        totals = Totals()
        work = HeapWork(heap, _sysmem(heap), totals, debug_checks=False)
        work.recover(Slot(Role.MUTATOR, 0))
        work.sweep_missed()  # the coordinator ends the sweep phase as it does every cycle

        live = heap.in_use_spans()
        assert (heap.span_sweepgen[live] == h).all()  # nothing cached, everything swept
        # every span in use when the sweep began was swept exactly once (committed once)
        gone = heap.span_state[spans0] != SPAN_IN_USE
        d = heap.span_nsweeps[spans0].astype(np.int64) - nsweeps0
        assert ((d == 1) | gone).all() and (d[~gone] == 1).all()
        check_heap(heap)  # allocCount == popcount of the alloc bits, for every span
        entries = specials.finq_entries(heap)
        assert np.unique(entries).size == entries.size  # no finalizer queued twice
        assert heap_stats(heap) == scan_heap_stats(heap)  # counts repaired with the bits
        # conservation from the tallies: every object allocated (the dead mutator's row, its
        # cut batch counted by the recount of its bits) is in the heap or was freed once
        t = heap.tallies.sum(axis=0)
        in_heap = int(heap.span_alloc_count[heap.in_use_spans()].sum(dtype=np.int64))
        assert int(t[T_OBJECTS_ALLOCATED]) == in_heap + int(t[T_OBJECTS_FREED])
        assert not heap.tallies[:, F_ALLOC].any()


def test_a_live_daemon_goes_on_after_its_scavenger_and_a_mutator_die_mid_step(tmp_path):
    """The same deaths in a running daemon (its workers inherit the armed fail points): each
    is reaped, recovered and replaced, and the cycles go on with nothing lost."""
    d = Daemon("--heap-mib", "64", "--sweepers", "2", "--mutators", "2", "--debug-checks",
               env={"SWEEPERD_FAILPOINTS": "scavenge.released,malloc.bits_set",
                    "SWEEPERD_FAILPOINTS_DIR": str(tmp_path)})
    try:
        # the scavenger releases when asked (FreeOSMemory), whatever its policy's pace
        end = time.monotonic() + 180
        while (st := d.status())["deaths"].get("scavenger", 0) < 1 \
                or st["deaths"].get("mutator", 0) < 1:
            assert time.monotonic() < end, f"no death at the fail points in 180 s: {st}"
            if st["deaths"].get("scavenger", 0) < 1 and any(  # (served by the scavenger:
                    w["role"] == "scavenger" and w["state"] == "alive"  # the coordinator's
                    for w in st["workers"]):  # own release would pass the armed point)
                d.request(protocol.encode("scavenge"))
            time.sleep(0.5)
        assert (tmp_path / "scavenge.released").exists() and (tmp_path / "malloc.bits_set").exists()
        c0 = st["cycle"]
        st = d.wait_for(lambda s: s["cycle"] >= c0 + 3 and s["workers_alive"] == 5,
                        timeout=120, what="three more cycles with every worker back")
        assert st["deaths"] == {"sweeper": 0, "scavenger": 1, "mutator": 1}
        assert st["debug"]["exactly_once_violations"] == 0
        assert st["mutators"]["lost_objects"] == 0 and st["mutators"]["payload_errors"] == 0
        assert sum(st["internal_errors"].values()) == 0
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize("point", ["mheap.freed", "scavenge.taken", "scavenge.released"])
def test_an_eager_freer_killed_mid_release_is_finished_by_the_coordinator(monkeypatch,
                                                                          tmp_path, point):
    """Under the eager policy a sweeper releases what it frees: killed after freeing, before
    taking, its freed pages are left backed; killed between its take and its finish, they
    carry its id.  The coordinator (eager too) finishes those and releases what was left, so
    no free page stays backed."""
    from sweeperd.runtime.heap import scavenging
    from sweeperd.runtime.scavenge import ReleaseOnFree

    with Heap.create(32 << 20) as heap:
        spans = [mheap.alloc_span(heap, 0, 16)[0] for _ in range(40)]
        heap.arena[: 40 * 16 * PAGE_SIZE] = 0xA5
        _die_at(monkeypatch, tmp_path, point, faultprocs.eager_freer,
                json.dumps(heap.handle.to_dict()))
        mine = heap.page_span == scavenging(owners.sweeper(0))
        dirty = (heap.page_span == PAGE_FREE) & (heap.scavenged == 0)
        left = dirty if point == "mheap.freed" else mine
        assert np.count_nonzero(left) == 4 * 16  # its first batch: freed, or taken
        heap.me = owners.COORDINATOR
        ReleaseOnFree.install(heap)
        totals = Totals()
        HeapWork(heap, _sysmem(heap), totals, debug_checks=False).recover(
            Slot(Role.SWEEPER, 0))
        assert not (heap.page_span <= scavenging(0)).any()
        dirty = (heap.page_span == PAGE_FREE) & (heap.scavenged == 0)
        assert not dirty.any()  # nothing freed is left backed
        assert _backed_of(heap, heap.scavenged != 0) == 0
        assert heap_stats(heap) == scan_heap_stats(heap)
        check_heap(heap)
        assert len([s for s in spans if heap.span_state[s] == SPAN_IN_USE]) == 36  # 1 batch
