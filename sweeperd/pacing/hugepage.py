"""The ``hugepage-aware`` policy: Go's goal, but only whole huge pages go back.

Theory of operation (after TCMalloc's Temeraire, "Beyond malloc efficiency to fleet efficiency",
OSDI 2021)
-------------------------------------------------------------------------------------------
Releasing part of a 2 MiB huge page breaks it into 4 KiB pages: every later access to what is
left pays TLB misses, and the kernel must find a whole free 2 MiB again to rebuild it.
Temeraire therefore gives memory back only as whole, entirely free huge pages.  This policy
keeps Go's retain goal and pacing (``GoPolicy``) and adds one filter: a candidate page may go
only if its whole 2 MiB-aligned block (256 pages of 8 KiB) is free — unless the heap's backing
is above the memory limit, where any free page may go.  The price is the free memory kept in
partly used huge pages, reported as ``hugepage_kept_bytes`` (counted at most every
``KEPT_EVERY_S``: a scan of the page table).

The block helpers (:func:`block_counts`, :func:`blocks_allow`) serve the policies that choose
whole huge pages to purge (``jemalloc-hpa``, ``tcmalloc-background``): per 2 MiB block, its
dirty pages (free, not released) and its pages in use, and a filter letting only chosen blocks
go.  A block cut short by the heap's end counts its missing pages as in use (never empty).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sweeperd.pacing.policy import GoParams, GoPolicy, PageTable, Plan, View
from sweeperd.pacing.scavpace import pages_to_release, retain_goal
from sweeperd.runtime.sizeclasses import PAGE_SIZE

HUGE_PAGE = 2 << 20
PAGES_PER_HUGE = HUGE_PAGE // PAGE_SIZE
KEPT_EVERY_S = 1.0


def whole_free_blocks(page_span: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Mask over pages [lo, hi): is the page's 2 MiB-aligned block entirely free?  (A page
    another releaser holds counts as free; a block cut short by the heap's end is never
    whole.)"""
    n = page_span.size
    a_lo = lo - lo % PAGES_PER_HUGE
    a_hi = -(-hi // PAGES_PER_HUGE) * PAGES_PER_HUGE
    free = np.zeros(a_hi - a_lo, dtype=bool)
    top = min(a_hi, n)
    free[: top - a_lo] = page_span[a_lo:top] < 0
    whole = free.reshape(-1, PAGES_PER_HUGE).all(axis=1)
    return np.repeat(whole, PAGES_PER_HUGE)[lo - a_lo: hi - a_lo]


def block_counts(pages: PageTable) -> tuple[np.ndarray, np.ndarray]:
    """Per 2 MiB block: (dirty pages, pages in use); the heap's short last block counts the
    pages past the end as in use.  Pages another releaser holds are neither."""
    n = pages.npages
    nblocks = -(-n // PAGES_PER_HUGE)
    dirty = np.zeros(nblocks * PAGES_PER_HUGE, dtype=bool)
    used = np.ones(nblocks * PAGES_PER_HUGE, dtype=bool)
    dirty[:n] = (pages.page_span == -1) & (pages.scavenged == 0)
    used[:n] = pages.page_span >= 0
    return (dirty.reshape(nblocks, PAGES_PER_HUGE).sum(axis=1),
            used.reshape(nblocks, PAGES_PER_HUGE).sum(axis=1))


def blocks_allow(chosen: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """The ``allow`` filter letting only the pages of the ``chosen`` blocks (a bool per
    block) go."""
    def allow(lo: int, hi: int) -> np.ndarray:
        return chosen[np.arange(lo, hi) // PAGES_PER_HUGE]
    return allow


def kept_pages(pages: PageTable) -> int:
    """Dirty pages (free, unreleased) in blocks that are not entirely free."""
    dirty = (pages.page_span == -1) & (pages.scavenged == 0)
    return int(np.count_nonzero(dirty & ~whole_free_blocks(pages.page_span, 0, pages.npages)))


class HugepagePolicy(GoPolicy):
    name = "hugepage-aware"
    paced = True

    def __init__(self) -> None:
        super().__init__(GoParams(version="1.19"))  # its own search: no density rule
        self.kept = 0
        self.kept_at = float("-inf")

    def plan(self, v: View, pages: PageTable) -> Plan:
        if v.now - self.kept_at >= KEPT_EVERY_S:
            self.kept, self.kept_at = kept_pages(pages), v.now
        need = pages_to_release(v.backed_bytes, retain_goal(v.heap_goal, v.memory_limit))
        if need == 0 or (v.memory_limit and v.backed_bytes > v.memory_limit):
            return Plan(need)
        span = pages.page_span

        def allow(lo: int, hi: int) -> np.ndarray:
            return whole_free_blocks(span, lo, hi)

        return Plan(need, allow=allow)

    def figures(self) -> dict[str, float]:
        return {"hugepage_kept_bytes": self.kept * PAGE_SIZE}
