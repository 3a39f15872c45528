"""The scavenger's core: which free pages to return to the OS, and the release protocol.

Theory of operation
-------------------
Candidates are free pages whose memory is still backed (``page_span == PAGE_FREE`` and not
``scavenged``), taken **from the highest address down** (Go's order: allocation prefers low
addresses, so the top of the heap is the least likely to be reused soon).  Contiguous candidate
pages form runs; a run never crosses an allocated page, by construction, and each run is one
madvise call (or one iovec of a vectored call), never one per page.

A release goes in three steps, as Go's scavenger allocates the pages it releases:

1. **take** (heap lock): the chosen runs are re-read and marked ``scavenging(me)`` (the
   releaser's claimer id is in the mark); from then on no allocator can hand them out,
   because the allocator only takes ``PAGE_FREE`` pages;
2. **release** (no lock): ``sysUnused`` on each run — the slow part, with mutators and sweepers
   running;
3. **finish** (heap lock): the pages become ``PAGE_FREE`` again with their ``scavenged`` bits
   set, and the allocator's search address is lowered to them.

A releaser killed between 1 and 3 leaves pages marked with its id;
:func:`sweeperd.runtime.recovery.released_runs` releases them again (MADV_REMOVE of a removed
page is a no-op) and finishes them, and touches no other releaser's pages (one may be between
its steps 1 and 3 right then: finishing its pages early would let an allocator take pages
that are about to be advised away).

Which pages and how many is the policy's business (``sweeperd.pacing.policy``): the search
takes a count, an optional filter (``allow``) and whether runs stay whole.  Under the
``eager`` policy the freer itself releases what it freed (:class:`ReleaseOnFree`).

**Scavenge assist** (Go 1.21+, the ``go`` policy at version "1.21": :class:`ScavengeAssist`,
installed as ``heap.on_alloc_scav`` in every mutator).  Go's ``mheap.allocSpan`` (go1.21
runtime/mheap.go), after taking ``scav`` bytes of released pages, scavenges
``scav + mappedReady - memoryLimit`` bytes itself when that is positive, with
``force = true`` (no density rule: ``scavChunkData.shouldScavenge``), counts them in
``pageAlloc.scav.releasedEager`` and its time in ``scavenge.assistTime``
(``/gc/scavenge/assist/cpu:cpu-seconds``).  Here an allocation that took released pages
(its count of them is what ``mheap.init_spans`` returns) calls the hook out of the heap
lock; the hook releases what the heap's backing by the books (pages not released, the
allocation's included) is over ``H_MEMORY_LIMIT``, top-down, and tallies the pages and
its thread CPU time in its row (``T_ASSIST_RELEASED_PAGES``, ``T_ASSIST_CPU_NS``,
``T_ASSIST_KERNEL_BYTES``; a mutator killed mid-assist leaves them uncounted there, its pages
counted as a freer's release).  An
allocation that took no released pages, or a heap with no limit, costs one test.  Go also
skips the assist while the GC CPU limiter is on, and scavenges on heap growth
(``gcPercentGoal``): sweeperd's arena has a fixed size and no heap growth, and its limiter
is not read here.

Invariants: no page of an in-use span is ever released; a page is released at most once until
it is reused (its scavenged bit is set by the release and cleared only by allocation); the
scavenged bit is set only on free pages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import numpy as np

from sweeperd.runtime.heap import (
    C_RELEASING_PAGES,
    C_SCAVENGED_PAGES,
    H_MEMORY_LIMIT,
    H_SCAV_SEARCH,
    H_SEARCH_ADDR,
    PAGE_FREE,
    RELEASE_BATCH,
    T_ASSIST_CPU_NS,
    T_ASSIST_KERNEL_BYTES,
    T_ASSIST_RELEASED_PAGES,
    T_MADVISE_BY,
    T_MADVISE_CALLS,
    T_RELEASE_CPU_NS,
    Heap,
    scavenging,
)
from sweeperd.runtime.runs import run_pages, runs
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys import failpoint
from sweeperd.sys.sysmem import SysMem


@dataclass
class Released:
    """What a release did: ``pages`` advised (the books) in ``runs`` calls or iovecs, and
    ``kernel_bytes`` the kernel really gave back — the taken runs' allocated blocks, counted
    just before the call (nobody can touch a ``PAGE_SCAVENGING`` page meanwhile).  The two
    differ by the free pages that were never touched since their span was allocated."""

    pages: int = 0
    runs: int = 0
    kernel_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.pages * PAGE_SIZE

    def add(self, other: Released) -> None:
        self.pages += other.pages
        self.runs += other.runs
        self.kernel_bytes += other.kernel_bytes


WINDOW = 1 << 16  # pages looked at per step of the downward search

# ``allow(lo, hi)``: a policy's further say on which candidates of pages [lo, hi) it releases,
# as a mask of hi - lo booleans, evaluated under the heap lock (so it may read the heap).
Allow = Callable[[int, int], np.ndarray]


def candidates(heap: Heap, max_pages: int, allow: Allow | None = None,
               whole_runs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Runs of free, unscavenged pages totalling at most ``max_pages``, highest first."""
    with heap.lock:
        starts, lengths, _ = _search(heap, max_pages, allow, whole_runs)
    return starts, lengths


def _search(heap: Heap, max_pages: int, allow: Allow | None = None,
            whole_runs: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`candidates`, plus where the next search may start once these are taken.

    The search starts at ``H_SCAV_SEARCH`` (no candidate at or above it) and moves down a
    window at a time, so a release costs in proportion to what it looks at, not to the heap.
    Freeing a span raises ``H_SCAV_SEARCH`` above it again.  With ``allow`` (a policy's
    filter) pages it refuses stay candidates, so the bound is lowered only past windows it
    has no say in: past none.  ``whole_runs`` keeps the last run whole (gperftools releases
    whole spans) where the count would cut it.  Call with the heap lock held.
    """
    heap.require_lock("scavenge._search")
    top = min(int(heap.header[H_SCAV_SEARCH]), heap.npages)
    hi = top
    found_s: list[np.ndarray] = []
    found_l: list[np.ndarray] = []
    total = 0
    while hi > 0 and total < max_pages:
        lo = max(0, hi - WINDOW)
        mask = (heap.page_span[lo:hi] == PAGE_FREE) & (heap.scavenged[lo:hi] == 0)
        if allow is not None:
            mask &= allow(lo, hi)
        s_, l_ = runs(mask)
        if s_.size:
            found_s.append(s_[::-1] + lo)
            found_l.append(l_[::-1])
            total += int(l_.sum())
        if total < max_pages:
            hi = lo
    if allow is not None:
        hi = top  # what the filter refused now may be allowed later
    if not found_s or max_pages <= 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), hi
    starts, lengths = _merge_top(np.concatenate(found_s), np.concatenate(found_l), max_pages,
                                 whole_runs)
    return starts, lengths, hi


def _merge_top(starts: np.ndarray, lengths: np.ndarray, max_pages: int,
               whole_runs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Join runs split by window edges (descending input), then cut to ``max_pages`` (or to
    the first runs that reach it, with ``whole_runs``)."""
    if starts.size > 1:
        join = starts[:-1] == starts[1:] + lengths[1:]  # run i starts where run i+1 ends
        if join.any():
            # fold each joined chain into its lowest run, from the top of the chain down
            alive = np.ones(starts.size, dtype=bool)
            for i in np.flatnonzero(join).tolist():
                lengths[i + 1] += lengths[i]
                alive[i] = False
            starts, lengths = starts[alive], lengths[alive]
    cum = np.cumsum(lengths)
    k = int(np.searchsorted(cum, max_pages, side="left"))
    if k < starts.size and whole_runs:
        return starts[: k + 1], lengths[: k + 1]
    if k < starts.size:  # the last run is cut: keep its top part
        keep = max_pages - (int(cum[k - 1]) if k else 0)
        starts, lengths = starts[: k + 1].copy(), lengths[: k + 1].copy()
        starts[k] += lengths[k] - keep
        lengths[k] = keep
    return starts, lengths


def take(heap: Heap, max_pages: int, allow: Allow | None = None,
         whole_runs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: choose and take runs out of the allocator's reach (marked with this process's
    claimer id, ``scavenging(heap.me)``)."""
    with heap.lock:
        starts, lengths, hi = _search(heap, max_pages, allow, whole_runs)
        heap.page_span[run_pages(starts, lengths)] = scavenging(heap.me)
        heap.count(C_RELEASING_PAGES, int(lengths.sum()))
        heap.header[H_SCAV_SEARCH] = hi  # taken: no candidate is left above hi
    return starts, lengths


def take_runs(heap: Heap, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Step 1 for given runs (the spans a freer just freed): the pages of them still free and
    unscavenged (an allocator may have taken some back meanwhile), taken, as runs."""
    pages = run_pages(starts, lengths)
    if pages.size == 0:
        return pages, pages
    with heap.lock:
        pages = pages[(heap.page_span[pages] == PAGE_FREE) & (heap.scavenged[pages] == 0)]
        heap.page_span[pages] = scavenging(heap.me)
        heap.count(C_RELEASING_PAGES, int(pages.size))
    if pages.size == 0:
        return pages, pages
    pages = np.sort(pages)
    brk = np.flatnonzero(np.diff(pages) != 1) + 1
    rs = np.concatenate(([0], brk))
    re = np.concatenate((brk, [pages.size]))
    return pages[rs], re - rs


def finish(heap: Heap, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Step 3: the released pages are free again, and marked scavenged."""
    pages = run_pages(starts, lengths)
    with heap.lock:
        fresh = int(pages.size) - int(np.count_nonzero(heap.scavenged[pages]))  # a redo: 0
        taken = int(np.count_nonzero(heap.page_span[pages] <= scavenging(0)))  # a redo: 0
        heap.scavenged[pages] = 1  # first: a page the allocator sees free is already marked
        heap.count(C_SCAVENGED_PAGES, fresh)
        heap.page_span[pages] = PAGE_FREE
        heap.count(C_RELEASING_PAGES, -taken)
        if pages.size and int(pages.min()) < heap.header[H_SEARCH_ADDR]:
            heap.header[H_SEARCH_ADDR] = int(pages.min())


def release(heap: Heap, sysmem: SysMem, starts: np.ndarray, lengths: np.ndarray,
            points: bool = True) -> Released:
    """Steps 2 and 3 for runs this process has taken; on a failure of the system call the
    pages go back as they were (free, unscavenged, in the search's sight).

    What it releases is tallied in this process's row of the heap's tallies, in an order a
    kill at any instruction keeps exact: the kernel's bytes are counted and written as the
    row's in-flight totals, the flag is raised, *then* the madvise; the totals are applied
    once the pages are finished.  A releaser killed before raising its flag has counted
    nothing (recovery counts what it releases of its pages); killed after, its in-flight
    totals stand (recovery applies them, and redoes its madvise without counting it).
    ``points``: pass its fail points (False for the coordinator's recovery)."""
    if starts.size == 0:
        return Released()
    if points:
        failpoint.hit("scavenge.taken")
    calls = dict(sysmem.calls)
    pages, nruns = int(lengths.sum()), int(starts.size)
    try:
        kernel = heap.arena_region.backed_in(starts * PAGE_SIZE, lengths * PAGE_SIZE)
        heap.begin_batch(RELEASE_BATCH, (pages, nruns, kernel))
        sysmem.sys_unused_runs(starts * PAGE_SIZE, lengths * PAGE_SIZE)
        if points:
            failpoint.hit("scavenge.released")
    except BaseException:
        heap.tallies[heap.me, RELEASE_BATCH[2]] = 0  # not counted: nothing was released
        with heap.lock:  # nothing was marked scavenged: give the pages back as they were
            heap.page_span[run_pages(starts, lengths)] = PAGE_FREE
            heap.count(C_RELEASING_PAGES, -pages)
            top = int((starts + lengths).max())  # and back in the search's sight
            if top > heap.header[H_SCAV_SEARCH]:
                heap.header[H_SCAV_SEARCH] = top
        _tally_calls(heap, sysmem, calls)
        raise
    finish(heap, starts, lengths)
    heap.apply_batch(RELEASE_BATCH)
    _tally_calls(heap, sysmem, calls)
    return Released(pages, nruns, kernel)


def _tally_calls(heap: Heap, sysmem: SysMem, before: dict[str, int]) -> None:
    """This process's madvise calls since ``before``, into its row (by advice and in all)."""
    total = 0
    for advice, n in sysmem.calls.items():
        d = n - before.get(advice, 0)
        if d and advice in T_MADVISE_BY:
            heap.tally(T_MADVISE_BY[advice], d)
        total += d
    heap.tally(T_MADVISE_CALLS, total)


def scavenge(heap: Heap, sysmem: SysMem, max_pages: int, allow: Allow | None = None,
             whole_runs: bool = False) -> Released:
    """Release up to ``max_pages`` free pages, highest first, in as few calls as runs."""
    starts, lengths = take(heap, max_pages, allow, whole_runs)
    return release(heap, sysmem, starts, lengths)


class _HeapHook:
    """A releaser that runs inside another process's heap call (a hook on the ``Heap``),
    with that process's own ``SysMem`` over the shared arena."""

    def __init__(self, heap: Heap, sysmem: SysMem) -> None:
        self.heap = heap
        self.sysmem = sysmem

    @classmethod
    def for_process(cls, heap: Heap) -> Self:
        """A hook over ``heap`` with a ``SysMem`` of this process's own."""
        return cls(heap, SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes,
                                shared=True))


class ReleaseOnFree(_HeapHook):
    """The ``eager`` policy's hook (``heap.on_free``): whoever frees spans releases their
    pages at once, through the same take → release → finish, and tallies what it did in its
    row of the heap's tallies (as :func:`release` does for every releaser)."""

    @classmethod
    def install(cls, heap: Heap) -> ReleaseOnFree:
        """Make this process release what it frees in ``heap`` (its own ``SysMem``)."""
        hook = cls.for_process(heap)
        heap.on_free = hook
        return hook

    def __call__(self, starts: np.ndarray, npages: np.ndarray) -> None:
        t0 = time.thread_time_ns()
        release(self.heap, self.sysmem, *take_runs(self.heap, starts, npages))
        self.heap.tally(T_RELEASE_CPU_NS, time.thread_time_ns() - t0)


def over_limit_pages(heap: Heap, limit: int) -> int:
    """Pages the heap's backing by the books (every page not released nor being released:
    Go's ``mappedReady`` of the heap) is over ``limit`` bytes; 0 with no limit."""
    if limit <= 0:
        return 0
    c = heap.counter_totals()
    backed = heap.npages - int(c[C_SCAVENGED_PAGES]) - int(c[C_RELEASING_PAGES])
    return max(0, backed * PAGE_SIZE - limit) // PAGE_SIZE


class ScavengeAssist(_HeapHook):
    """Go 1.21's allocation-time ("eager") scavenging over the memory limit (the module's
    notes): ``heap.on_alloc_scav`` in a process that allocates.  Calling it with the count
    of released pages an allocation took returns the pages it released (0 mostly)."""

    @classmethod
    def install(cls, heap: Heap) -> ScavengeAssist:
        """Make this process's allocations scavenge over the limit (its own ``SysMem``)."""
        hook = cls.for_process(heap)
        heap.on_alloc_scav = hook
        return hook

    def __call__(self, nscav: int) -> int:
        if nscav <= 0:
            return 0
        limit = int(self.heap.header[H_MEMORY_LIMIT])
        if limit <= 0:
            return 0
        t0 = time.thread_time_ns()
        over = over_limit_pages(self.heap, limit)
        r = scavenge(self.heap, self.sysmem, over) if over > 0 else Released()
        self.heap.tally(T_ASSIST_RELEASED_PAGES, r.pages)
        self.heap.tally(T_ASSIST_KERNEL_BYTES, r.kernel_bytes)
        self.heap.tally(T_ASSIST_CPU_NS, time.thread_time_ns() - t0)
        return r.pages
