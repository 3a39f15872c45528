"""The ``tcmalloc-background`` policy: a constant release rate, whole free huge pages first.

Theory of operation (after google/tcmalloc: tcmalloc/background.cc, tcmalloc/parameters.cc,
tcmalloc/malloc_extension.cc, tcmalloc/huge_page_aware_allocator.cc, tcmalloc/huge_page_filler.h)
----------------------------------------------------------------------------------------------
TCMalloc's ``MallocExtension::ProcessBackgroundActions`` is a loop its user runs on a thread of
their own: every ``GetBackgroundProcessSleepInterval`` (1 s) it calls
``ReleaseMemoryToSystem(rate × seconds since its last round)``, ``rate`` being
``MallocExtension::SetBackgroundReleaseRate`` in bytes per second (``release_rate_bytes_s``
here).  TCMalloc's default rate is 0 — "zero inhibits the release path" (parameters.cc
initialises ``malloc_release_rate`` to ``BytesPerSecond(0)``) — so at its defaults this policy
never releases, as TCMalloc does not; its users set a rate.  ``ReleaseMemoryToSystem`` keeps
what a release gave beyond the request (``extra_bytes_released``) and takes it off the next
request, and a request it could not fill is not carried over.  So over any span the bytes
released are the rate × the time, within one release's overshoot: a credit in bytes grows at
``rate`` and a release is asked for whenever it is positive; a release takes its bytes off
(below 0: released ahead); a request that finds less than it asked for is forgiven the rest.

Each request goes to Temeraire's ``HugePageAwareAllocator::ReleaseAtLeastNPages``, whose rule
is modelled: first the ``HugeCache``'s whole free huge pages (``ReleaseCachedPages``, rounded up
to whole huge pages), then, if that fell short and subrelease is on (``hpaa_subrelease``, on by
default), the filler's partly used huge pages (``HugePageFiller::ReleasePages``): those with
the fewest pages in use first, each giving all its free pages, until the request is met.  The
filler subreleases no more than it holds above its recent peak demand: with the skip-subrelease
interval (``filler_skip_subrelease_interval``, 60 s in the source read;
``skip_subrelease_interval_s`` here, 0 = no such rule) the request is cut to (pages in use +
free backed pages in partly used huge pages) − the peak of pages in use over the interval, so
memory a recent peak needed is not broken up just to be faulted back.

Here a huge page is a 2 MiB-aligned block of the page heap (256 pages of 8 KiB); a block all
free is in the "HugeCache", one partly in use in the "filler".  At a wake with a positive credit
the policy scans the page table once, chooses whole free blocks (highest address first, the
lab's order) and then filler blocks (fewest in use first, highest first among equals), and
releases every free backed page of the chosen blocks, across wakes if it takes longer than one.
It looks every ``SLEEP_S`` (TCMalloc's 1 s); the peak demand is sampled at each look, kept per
second.  Invariants: the credit never exceeds what the rate allowed since the last request
that found too little; the bytes released up to any time are at least the rate's allowance
less what requests could not find, and at most the allowance plus the overshoot of the last
choice (the free backed pages of its last block).

Not modelled: the ``HugeCache``'s own release of free huge pages above its demand-sized limit
(it runs on free, whatever the rate); ``HugeRegion`` s (large allocations) and
``release_pages_from_huge_region``; the short/long-interval variant of the skip rule (an
experiment in the source read); per-CPU and transfer caches (this heap's mcaches are Go's).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from sweeperd.pacing.hugepage import block_counts, blocks_allow
from sweeperd.pacing.policy import PageTable, Plan, View
from sweeperd.runtime.sizeclasses import PAGE_SIZE

SLEEP_S = 1.0  # TCMalloc's default background sleep interval


@dataclass(frozen=True)
class TcBackgroundParams:
    release_rate_bytes_s: int = 0  # TCMalloc's default (parameters.cc): 0, no release
    skip_subrelease_interval_s: float = 60.0  # filler_skip_subrelease_interval (0: off)


def choose(dirty: np.ndarray, used: np.ndarray, need: int,
           subrelease_limit: int) -> np.ndarray:
    """The blocks to release for ``need`` pages (a bool per block): whole free blocks
    (highest first) until met, then partly used ones (fewest in use first, highest first
    among equals) for at most ``subrelease_limit`` of what is still needed."""
    chosen = np.zeros(dirty.size, dtype=bool)
    got = 0
    empty = np.flatnonzero((used == 0) & (dirty > 0))[::-1]
    for b in empty:
        if got >= need:
            return chosen
        chosen[b] = True
        got += int(dirty[b])
    want = min(need - got, subrelease_limit)
    partial = np.flatnonzero((used > 0) & (dirty > 0))[::-1]
    partial = partial[np.argsort(used[partial], kind="stable")]
    sub = 0
    for b in partial:
        if sub >= want:
            break
        chosen[b] = True
        sub += int(dirty[b])
    return chosen


class TcBackgroundPolicy:
    name = "tcmalloc-background"
    paced = False

    def __init__(self, params: TcBackgroundParams | None = None) -> None:
        self.params = params or TcBackgroundParams()
        if self.params.release_rate_bytes_s < 0:
            raise ValueError(f"tcmalloc-background policy: release_rate_bytes_s = "
                             f"{self.params.release_rate_bytes_s} is below 0")
        if self.params.skip_subrelease_interval_s < 0:
            raise ValueError(f"tcmalloc-background policy: skip_subrelease_interval_s = "
                             f"{self.params.skip_subrelease_interval_s} is below 0")
        self.rate = float(self.params.release_rate_bytes_s)
        self.credit = 0.0  # bytes the rate allows and not yet released (< 0: extra released)
        self.prev: float | None = None  # the last round's time (prev_time)
        self.pending = 0  # pages of the chosen blocks not yet released
        self.allow = blocks_allow(np.zeros(0, dtype=bool))
        self.peaks: deque[list[int]] = deque()  # [second, peak pages in use in it]

    def demand_peak(self, now: float, in_use: int) -> int:
        """Record ``in_use`` at ``now``; the peak of pages in use over the interval."""
        sec = int(now)
        if self.peaks and self.peaks[-1][0] == sec:
            self.peaks[-1][1] = max(self.peaks[-1][1], in_use)
        else:
            self.peaks.append([sec, in_use])
        horizon = now - self.params.skip_subrelease_interval_s
        while self.peaks and self.peaks[0][0] + 1 <= horizon:
            self.peaks.popleft()
        return max(p for _, p in self.peaks)

    def plan(self, v: View, pages: PageTable) -> Plan:
        peak = self.demand_peak(v.now, v.in_use_pages)
        if self.prev is not None:
            self.credit += self.rate * max(0.0, v.now - self.prev)  # time going back: 0
        self.prev = v.now
        if self.pending > 0:  # a release under way: carry it out
            return Plan(self.pending, allow=self.allow, sleep_s=0.0)
        if self.credit <= 0:
            return Plan(0, sleep_s=SLEEP_S)
        need = math.ceil(self.credit / PAGE_SIZE)
        dirty, used = block_counts(pages)
        if self.params.skip_subrelease_interval_s > 0:
            partial_free = int(dirty[used > 0].sum())
            limit = max(0, v.in_use_pages + partial_free - peak)
        else:
            limit = need
        chosen = choose(dirty, used, need, limit)
        self.pending = int(dirty[chosen].sum())
        if self.pending * PAGE_SIZE < self.credit:  # a request not met is not carried over
            self.credit = float(self.pending * PAGE_SIZE)
        if self.pending == 0:
            return Plan(0, sleep_s=SLEEP_S)
        self.allow = blocks_allow(chosen)
        return Plan(self.pending, allow=self.allow, sleep_s=0.0)

    def released(self, pages: int, v: View) -> None:
        self.credit -= pages * PAGE_SIZE
        self.pending = 0 if pages == 0 else max(0, self.pending - pages)

    def figures(self) -> dict[str, float]:
        return {"tcmalloc_release_credit_bytes": self.credit}
