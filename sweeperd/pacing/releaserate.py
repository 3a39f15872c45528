"""The ``gperftools-rate`` policy: release paced by the pages returned to the page heap.

Theory of operation (after gperftools' src/page_heap.cc, ``PageHeap::IncrementalScavenge``)
-----------------------------------------------------------------------------------------
Every span returned to the page heap subtracts its length from ``scavenge_counter_``.  When
the counter goes negative, the page heap releases at least one page — ``ReleaseAtLeastNPages(1)``
gives back whole free spans, so often more — and sets the counter to
``min(1000 / release_rate × pages released, kMaxReleaseDelay)``: at ``release_rate`` 1.0 (the
default, ``TCMALLOC_RELEASE_RATE``) about one page is released per 1,000 pages freed.  If
nothing could be released, the counter is set to ``kDefaultReleaseDelay``.  gperftools' page is
8 KiB, as sweeperd's is, so its constants carry over in pages: ``kMaxReleaseDelay`` = 2^20,
``kDefaultReleaseDelay`` = 2^18.

gperftools runs this inside every ``Delete``; here the scavenger reads the heap's running total
of freed pages (``T_FREED_PAGES``) every ``POLL_S`` and plays the frees since its last look
against the counter.  A sweep frees thousands of spans at once, each a separate ``Delete`` in
gperftools, so a deficit carries over (the counter is raised by each release's wait, not set
to it) and one look may release several runs; a release is one whole free run, the highest
(gperftools goes round-robin over its free lists by length; sweeperd's page heap has no lists).

Held against the real gperftools (issue 20: ``c-tcmalloc``, Debian 12's gperftools 2.10 at its
defaults; 2026-12-01, one run): after ``spike-then-idle``'s drop both kept everything (lab end
985 MiB, gperftools 577 MiB: the peak of a GC'd heap is its heap goal, about 2x the live heap
at GOGC 100), so the free-page share came out 1.52x and the end 1.71x; with the peaks divided
out (``free_hold_seconds``) 0.88x.  gperftools 2.10 released nothing of a 96 MiB drop at a
release rate of 1 or 1000 (measured): its first look finds nothing to release, and
``kDefaultReleaseDelay`` then waits for 2^18 pages (2 GiB) of frees, as modelled here;
``TCMALLOC_AGGRESSIVE_DECOMMIT=true`` (``c-tcmalloc:aggressive_decommit=true``) releases each
span as it is freed (18 MiB left).
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeperd.pacing.policy import PageTable, Plan, View

MAX_RELEASE_DELAY = 1 << 20  # pages (kMaxReleaseDelay)
DEFAULT_RELEASE_DELAY = 1 << 18  # pages (kDefaultReleaseDelay)
POLL_S = 0.01


@dataclass(frozen=True)
class RateParams:
    release_rate: float = 1.0  # gperftools' default (TCMALLOC_RELEASE_RATE)


class RatePolicy:
    name = "gperftools-rate"
    paced = False

    def __init__(self, params: RateParams | None = None) -> None:
        self.params = params or RateParams()
        self.counter = 0  # scavenge_counter_, in pages
        self.seen: int | None = None  # the freed-pages total at the last look
        self.releases = 0

    def plan(self, v: View, pages: PageTable) -> Plan:
        if self.seen is None:
            self.seen = v.freed_pages
        self.counter -= v.freed_pages - self.seen
        self.seen = v.freed_pages
        if self.counter >= 0:
            return Plan(0, sleep_s=POLL_S)
        return Plan(1, whole_runs=True, sleep_s=0.0)  # ReleaseAtLeastNPages(1)

    def released(self, pages: int, v: View) -> None:
        if pages == 0:
            self.counter = DEFAULT_RELEASE_DELAY
            return
        self.releases += 1
        wait = min(1000.0 / self.params.release_rate * pages, MAX_RELEASE_DELAY)
        self.counter += int(wait)

    def figures(self) -> dict[str, float]:
        return {"release_rate_counter_pages": self.counter}
