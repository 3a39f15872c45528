"""The coordinator's own work on the shared heap: the machine's heap actions, carried out.

Theory of operation
-------------------
The cycle machine (cycle.py) decides; this module does what it decides that touches the heap:
measuring it (answered as ``*Measured`` events), beginning a sweep (the heap goal for the
scavenger, ``sweepgen += 2`` and sharding, under the heap lock), sweeping spans the shards
missed (claimed under the coordinator's own claimer id), ending a cycle (draining finalizers),
recovering a dead worker (``runtime/recovery.py``) and FreeOSMemory when no scavenger runs.
With ``--debug-checks`` it also checks, per cycle, that objects are conserved between mark and
sweep and that every span in use at the sweep's start was swept exactly once.

What it does to the heap is tallied in the coordinator's row of the heap's tallies (by the
runtime, as for every worker); the rest it counts goes to the
:class:`~sweeperd.daemon.totals.Totals` it was given.  One owner: the coordinator's main loop.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sweeperd.daemon import cycle as c
from sweeperd.daemon.cycle import Slot
from sweeperd.daemon.totals import Totals
from sweeperd.runtime import check, heapstats, owners, recovery, scavenge, shards
from sweeperd.runtime.heap import C_OBJECT_BYTES, H_HEAP_GOAL, H_SWEEPGEN, Heap
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.runtime.specials import run_finalizers
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.runtime.sweepgen import try_claim
from sweeperd.sys.sysmem import SysMem


def log(msg: str) -> None:
    """One line on stdout; a closed or broken stdout does not stop the daemon."""
    with contextlib.suppress(OSError, ValueError):
        print(f"sweeperd: {msg}", flush=True)


class HeapWork:
    def __init__(self, heap: Heap, sysmem: SysMem, totals: Totals, debug_checks: bool) -> None:
        self.heap = heap
        self.sysmem = sysmem
        self.totals = totals
        self.debug_checks = debug_checks
        self.debug: dict[str, Any] = {
            "cycles_checked": 0, "spans_checked": 0, "exactly_once_violations": 0,
            "conservation_checks": 0, "conservation_gap": 0, "counter_gap_bytes": 0,
            "marked_gap_bytes": 0}
        self._sweep_counts: tuple[Any, Any] | None = None
        self._counters_dirty = False

    def measure_heap(self) -> c.HeapMeasured:
        """From the heap's running counters: O(1) in the heap's size (every 20 ms)."""
        heap = self.heap
        in_use = heap.in_use_pages() * PAGE_SIZE
        return c.HeapMeasured(heap.objects_bytes(), heap.heap_bytes - in_use, heap.heap_bytes)

    def measure_live(self, reported_bytes: int) -> c.LiveMeasured:
        """The live heap from what the mutators reported marking: O(1), where a count of the
        mark bits takes half a second at 16 GiB, in the loop that answers ``status``.  With
        ``--debug-checks`` the count is made too and any difference kept."""
        if self.debug_checks:
            self.debug["marked_gap_bytes"] = reported_bytes - heapstats.marked_bytes(self.heap)
        return c.LiveMeasured(reported_bytes, self.heap.in_use_pages())

    def measure_sweep(self) -> c.SweepMeasured:
        heap = self.heap
        return c.SweepMeasured(shards.remaining_pages(heap), shards.in_flight(heap),
                               int(shards.unfinished(heap).size), int(shards.unswept(heap).size))

    def begin_sweep(self, a: c.BeginSweep) -> None:
        heap = self.heap
        if self.debug_checks:  # nothing moves now: mutators wait, sweepers are done
            self.debug["conservation_checks"] += 1
            t = heapstats.read_tallies(heap)  # from shared memory: a death loses none of it
            self.debug["conservation_gap"] = check.conservation_gap(
                heap, t.alloc.objects, t.objects_freed)
            # the running counters against a scan (only a death may drift them)
            self.debug["counter_gap_bytes"] = int(heapstats.counter_drift(heap)[C_OBJECT_BYTES])
        if self._counters_dirty:  # a death may have cut a store from its count: rebase
            drift = heapstats.rebase(heap)
            self._counters_dirty = False
            if drift.any():
                log(f"running counters rebased after a death (drift {drift.tolist()})")
        heap.header[H_HEAP_GOAL] = a.goal_bytes  # the scavenger's retain goal follows
        with heap.lock:
            if heap.sweepgen + 2 != a.sweepgen:
                raise c.CycleInvariantBroken(
                    f"heap sweepgen {heap.sweepgen}, machine begins sweep {a.sweepgen}")
            heap.header[H_SWEEPGEN] = a.sweepgen
            shards.assign(heap, a.nshards)
        if self.debug_checks:
            self._sweep_counts = check.sweep_counts(heap)

    def sweep_missed(self) -> None:
        heap = self.heap
        with heap.lock:
            left = shards.unswept(heap)
            mine = try_claim(heap.span_sweepgen, left, heap.sweepgen, heap.span_owner,
                             owners.COORDINATOR)
        log(f"{left.size} spans missed by the shards; sweeping {mine.size} of them")
        sweep_batch(heap, mine)  # tallied in the coordinator's row

    def end_cycle(self, a: c.EndCycle) -> None:
        self.totals.sweep_phase_seconds(a.sweep_seconds)
        if self._sweep_counts is not None:
            spans, before = self._sweep_counts
            self.debug["cycles_checked"] += 1
            self.debug["spans_checked"] += int(spans.size)
            self.debug["exactly_once_violations"] += check.exactly_once_violations(
                self.heap, spans, before)
            self._sweep_counts = None
        fs, _ = run_finalizers(self.heap)
        self.totals.finalizers_run += int(fs.size)

    def recover(self, slot: Slot) -> None:
        """What the dead worker held, finished; what this does is tallied in the
        coordinator's row of the heap's tallies (and a batch the dead one had counted, in
        its own)."""
        rec = recovery.recover(self.heap, slot.role, slot.id, self.sysmem)
        self._counters_dirty = True
        if self.heap.on_free is not None:  # eager: what the dead one freed but had not
            scavenge.scavenge(self.heap, self.sysmem, self.heap.npages)
        if rec.alloc_counts_repaired:
            log(f"repaired allocCount of {rec.alloc_counts_repaired} spans from their bitmaps")

    def free_os_memory(self) -> dict[str, Any]:
        """Release every free backed page now, from this process."""
        r = scavenge.scavenge(self.heap, self.sysmem, self.heap.npages)
        return {"released_bytes": r.kernel_bytes, "advised_bytes": r.bytes}
