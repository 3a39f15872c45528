"""Recovery after a death: what a killed process held, finished by the coordinator.

Theory of operation
-------------------
Any worker may be killed at any instruction.  Everything it could have been holding is
recorded in the shared heap under its claimer id (owners.py), never only in its own memory,
so the coordinator, once it has *reaped* the process (nothing of it can still run), finds and
finishes it here, and every step is idempotent (a coordinator killed during recovery is
replaced by a fresh daemon, never by a second recovery of a half-recovered heap — but each
step may also simply be run again):

* **a sweeper or a mutator's claims** (:func:`claims`): spans at sweepgen h-1 with its id
  (committed ones are finished, the rest swept, nothing twice — sweep.py's commit protocol),
  the spans of its last chunk it had not claimed yet (shards.py), and pages whose freeSpan it
  cut short (``mheap.repair``);
* **a mutator's cache** (:func:`mutator_cache`): spans cached by it (h+1 or h+3).  It may have
  died between writing alloc bits and ``allocCount``, so the counts are first recomputed from
  the bitmaps (the bits are the truth); then each span is uncached as the mutator would have;
* **a releaser's runs** (:func:`released_runs`): pages left marked ``scavenging(owner)`` by
  the dead scavenger (or, under the ``eager`` policy, by a worker releasing what it freed)
  are released again (``MADV_REMOVE`` of a removed page is a no-op) and finished;
* **its tallies** (heap.py's in-flight batches): a batch it had flagged is applied to its row
  (it had counted the work, which recovery then finishes without counting); an unflagged one
  had counted nothing, and what recovery does of it is counted in the coordinator's row.  A
  mutator's allocation is the one case with two halves: flag 1 (alloc bits maybe set,
  allocCount not) is counted by the recount of its bits, flag 2 by its in-flight tally
  (malloc.recover_tally).

Preconditions: the dead process has been reaped; the caller is the coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sweeperd.roles import Role
from sweeperd.runtime import mcentral, owners
from sweeperd.runtime.heap import (
    H_SCAV_SEARCH,
    RELEASE_BATCH,
    SPAN_IN_USE,
    SWEEP_BATCH,
    Heap,
    scavenging,
)
from sweeperd.runtime.malloc import recover_tally, repair_alloc_counts
from sweeperd.runtime.mheap import repair
from sweeperd.runtime.runs import runs
from sweeperd.runtime.scavenge import Released, _tally_calls, finish, release
from sweeperd.runtime.shards import unfinished
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.runtime.sweep import SweepStats, sweep_batch
from sweeperd.runtime.sweepgen import try_claim
from sweeperd.sys.sysmem import SysMem


@dataclass
class Recovered:
    """What one recovery did: sweeping it finished, allocCounts it repaired, pages it
    released for a dead scavenger."""

    swept: SweepStats = field(default_factory=SweepStats)
    alloc_counts_repaired: int = 0
    released: Released = field(default_factory=Released)


def claims(heap: Heap, owner: int) -> SweepStats:
    """Finish what the dead claimer ``owner`` left: half-freed pages, spans it had claimed,
    and spans of its last chunk it had not claimed yet."""
    h = heap.sweepgen
    with heap.lock:
        repair(heap, owner)
        if owners.has_shard_row(owner):
            lo, hi = int(heap.shards[owner, 4]), int(heap.shards[owner, 5])
            heap.shards[owner, 4] = heap.shards[owner, 5] = 0
            starts = np.flatnonzero(heap.span_state[lo:hi] == SPAN_IN_USE) + lo
            try_claim(heap.span_sweepgen, starts, h, heap.span_owner, owner)
    # Its spans at h-1 are the batch it was sweeping: if it had flagged the batch, it had
    # counted it (applied here) and what is finished now is not counted again.
    counted = bool(heap.tallies[owner, SWEEP_BATCH[2]])
    heap.apply_batch(SWEEP_BATCH, owner)
    return sweep_batch(heap, unfinished(heap, owner), recover=True, count=not counted)


def mutator_cache(heap: Heap, owner: int) -> tuple[SweepStats, int]:
    """Take back the spans the dead mutator ``owner`` had cached; returns the sweep work this
    did (stale spans are swept) and how many allocCounts were repaired from the bitmaps."""
    mine = mcentral.cached_by(heap, owner)
    added = [0, 0]
    fixed = repair_alloc_counts(heap, mine, added)
    recover_tally(heap, owner, (added[0], added[1]))
    st = SweepStats()
    for s in mine.tolist():
        st.add(mcentral.uncache_span(heap, int(s)))
    return st, fixed


def released_runs(heap: Heap, sysmem: SysMem, owner: int = owners.SCAVENGER) -> Released:
    """Finish the release the dead releaser ``owner`` left half done (the scavenger; or,
    under the ``eager`` policy, a worker that was releasing what it had freed).

    Who counts the pages: if the dead one had raised its release flag, it had counted them
    (kernel bytes measured before its madvise, when nobody else could touch them): its
    in-flight totals are applied to its row and the redone madvise counts nothing.  Else it
    had counted nothing: they are released through :func:`scavenge.release`, which tallies
    them in this process's row.  Returns what this call counted."""
    starts, lengths = runs(heap.page_span == scavenging(owner))
    counted = bool(heap.tallies[owner, RELEASE_BATCH[2]])
    heap.apply_batch(RELEASE_BATCH, owner)
    if not starts.size:
        return Released()
    with heap.lock:
        heap.header[H_SCAV_SEARCH] = heap.npages
    if not counted:
        return release(heap, sysmem, starts, lengths, points=False)
    calls = dict(sysmem.calls)
    sysmem.sys_unused_runs(starts * PAGE_SIZE, lengths * PAGE_SIZE)  # no-op if done
    finish(heap, starts, lengths)
    _tally_calls(heap, sysmem, calls)
    return Released()


def recover(heap: Heap, role: Role, wid: int, sysmem: SysMem) -> Recovered:
    """Everything a dead worker (``role``, slot ``wid``) held, finished."""
    out = Recovered()
    if role is Role.SCAVENGER:
        out.released = released_runs(heap, sysmem)
        return out
    owner = owners.sweeper(wid) if role is Role.SWEEPER else owners.mutator(wid)
    out.released = released_runs(heap, sysmem, owner)
    out.swept.add(claims(heap, owner))
    if role is Role.MUTATOR:
        st, out.alloc_counts_repaired = mutator_cache(heap, owner)
        out.swept.add(st)
    return out
