"""The scavenger's core: which free pages to return to the OS, and the release protocol.

Theory of operation
-------------------
Candidates are free pages whose memory is still backed (``page_span == PAGE_FREE`` and not
``scavenged``), taken **from the highest address down** (Go's order: allocation prefers low
addresses, so the top of the heap is the least likely to be reused soon).  Contiguous candidate
pages form runs; a run never crosses an allocated page, by construction, and each run is one
madvise call (or one iovec of a vectored call), never one per page.

A release goes in three steps, as Go's scavenger allocates the pages it releases:

1. **take** (heap lock): the chosen runs are re-read and marked ``PAGE_SCAVENGING``; from then
   on no allocator can hand them out, because the allocator only takes ``PAGE_FREE`` pages;
2. **release** (no lock): ``sysUnused`` on each run — the slow part, with mutators and sweepers
   running;
3. **finish** (heap lock): the pages become ``PAGE_FREE`` again with their ``scavenged`` bits
   set, and the allocator's search address is lowered to them.

A scavenger killed between 1 and 3 leaves ``PAGE_SCAVENGING`` pages;
:func:`sweeperd.runtime.recovery.dead_scavenger` releases them again (MADV_REMOVE of a removed
page is a no-op) and finishes them.

Invariants: no page of an in-use span is ever released; a page is released at most once until
it is reused (its scavenged bit is set by the release and cleared only by allocation); the
scavenged bit is set only on free pages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweeperd.runtime.heap import (
    C_SCAVENGED_PAGES,
    H_SCAV_SEARCH,
    H_SEARCH_ADDR,
    PAGE_FREE,
    PAGE_SCAVENGING,
    Heap,
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


WINDOW = 1 << 16  # pages looked at per step of the downward search


def candidates(heap: Heap, max_pages: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of free, unscavenged pages totalling at most ``max_pages``, highest first."""
    with heap.lock:
        starts, lengths, _ = _search(heap, max_pages)
    return starts, lengths


def _search(heap: Heap, max_pages: int) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`candidates`, plus where the next search may start once these are taken.

    The search starts at ``H_SCAV_SEARCH`` (no candidate at or above it) and moves down a
    window at a time, so a release costs in proportion to what it looks at, not to the heap.
    Freeing a span raises ``H_SCAV_SEARCH`` above it again.  Call with the heap lock held.
    """
    heap.require_lock("scavenge._search")
    hi = min(int(heap.header[H_SCAV_SEARCH]), heap.npages)
    found_s: list[np.ndarray] = []
    found_l: list[np.ndarray] = []
    total = 0
    while hi > 0 and total < max_pages:
        lo = max(0, hi - WINDOW)
        s_, l_ = runs((heap.page_span[lo:hi] == PAGE_FREE) & (heap.scavenged[lo:hi] == 0))
        if s_.size:
            found_s.append(s_[::-1] + lo)
            found_l.append(l_[::-1])
            total += int(l_.sum())
        if total < max_pages:
            hi = lo
    if not found_s or max_pages <= 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), hi
    starts, lengths = _merge_top(np.concatenate(found_s), np.concatenate(found_l), max_pages)
    return starts, lengths, hi


def _merge_top(starts: np.ndarray, lengths: np.ndarray,
               max_pages: int) -> tuple[np.ndarray, np.ndarray]:
    """Join runs split by window edges (descending input), then cut to ``max_pages``."""
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
    if k < starts.size:  # the last run is cut: keep its top part
        keep = max_pages - (int(cum[k - 1]) if k else 0)
        starts, lengths = starts[: k + 1].copy(), lengths[: k + 1].copy()
        starts[k] += lengths[k] - keep
        lengths[k] = keep
    return starts, lengths


def take(heap: Heap, max_pages: int) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: choose and take runs out of the allocator's reach."""
    with heap.lock:
        starts, lengths, hi = _search(heap, max_pages)
        heap.page_span[run_pages(starts, lengths)] = PAGE_SCAVENGING
        heap.header[H_SCAV_SEARCH] = hi  # taken: no candidate is left above hi
    return starts, lengths


def finish(heap: Heap, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Step 3: the released pages are free again, and marked scavenged."""
    pages = run_pages(starts, lengths)
    with heap.lock:
        fresh = int(pages.size) - int(np.count_nonzero(heap.scavenged[pages]))  # a redo: 0
        heap.scavenged[pages] = 1  # first: a page the allocator sees free is already marked
        heap.count(C_SCAVENGED_PAGES, fresh)
        heap.page_span[pages] = PAGE_FREE
        if pages.size and int(pages.min()) < heap.header[H_SEARCH_ADDR]:
            heap.header[H_SEARCH_ADDR] = int(pages.min())


def scavenge(heap: Heap, sysmem: SysMem, max_pages: int) -> Released:
    """Release up to ``max_pages`` free pages, highest first, in as few calls as runs."""
    starts, lengths = take(heap, max_pages)
    if starts.size == 0:
        return Released()
    failpoint.hit("scavenge.taken")
    try:
        kernel = heap.arena_region.backed_in(starts * PAGE_SIZE, lengths * PAGE_SIZE)
        sysmem.sys_unused_runs(starts * PAGE_SIZE, lengths * PAGE_SIZE)
        failpoint.hit("scavenge.released")
    except BaseException:
        with heap.lock:  # nothing was marked scavenged: give the pages back as they were
            heap.page_span[run_pages(starts, lengths)] = PAGE_FREE
            top = int((starts + lengths).max())  # and back in the search's sight
            if top > heap.header[H_SCAV_SEARCH]:
                heap.header[H_SCAV_SEARCH] = top
        raise
    finish(heap, starts, lengths)
    return Released(int(lengths.sum()), int(starts.size), kernel)
