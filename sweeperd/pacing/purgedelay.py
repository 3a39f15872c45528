"""The ``mimalloc-delay`` policy: each freed run is released once it has been free a while.

Theory of operation (after mimalloc's documented ``purge_delay`` option)
---------------------------------------------------------------------
mimalloc purges OS pages that are not in use after ``MIMALLOC_PURGE_DELAY`` milliseconds
(10 in mimalloc v2, the default here; v3 raised it to 1,000): a page freed gets a deadline,
and at its next look past the deadline the allocator purges it.  Here each dirty page (free,
not released since last used) gets the time the scavenger first saw it dirty, and at each
wake the pages whose time plus ``purge_delay_ms`` has passed are released, highest first.

Seeing a page dirty means a scan of the page table (two byte compares a page: ~20 µs at
256 MiB, ~3 ms at 16 GiB).  The scan runs only when pages were freed since the last one or
a deadline has come, and a wake comes at most every ``COST_SHARE`` times the last scan's cost,
so looking costs at most 1/``COST_SHARE`` of a core however large the heap (mimalloc too looks
only when its owning thread next enters the allocator).  A page reused and freed again between
two scans keeps its first time: it is released up to one period early.

``purge_delay_ms`` as mimalloc takes it: 0 purges at once (the freers release what they free,
as ``eager``: ``policies.releases_on_free``; the scavenger idles), -1 never purges (as
``none``).  ``on``: ``"timer"`` (the default) looks at every wake; ``"activity"`` is mimalloc
itself, which checks its deadlines only when its heap is used (mimalloc_rust#141): the policy
looks (scans, stamps, releases what is due) only at a wake where the allocator was used
(``activity.py``), or to finish a release under way, so an idle process keeps its free pages
past their deadlines until it allocates again.

Held against the real mimalloc (issue 20: ``c-mimalloc``, Debian 12's mimalloc 2.0.9 at its
defaults, the same scenario; ``sweeperd loadtest --scenario spike-then-idle --policy
mimalloc-delay --c-reference mimalloc``, 2026-12-01, one run): the lab's free-page share
(∫ free backed dt) was 0.02x mimalloc's ∫(RSS − live)dt and its end backing 0.04x (19 vs 538
MiB): mimalloc kept the whole drop.  Why, from mimalloc 2.0's ``segment.c``: its delayed
decommit is kept per 32 MiB segment (a mask and one deadline, pushed out by each free in it)
and carried out only by ``mi_segment_delayed_decommit`` when that segment is used again (a
span allocated or freed in it), never by a clock; a segment left wholly free goes to the
segment cache, purged (``segment_decommit_delay``, 500 ms) only when the cache is used.  After
the drop the segments that held the dropped objects are not touched again, so their memory
stays until the thread exits — with the program still allocating 2 MiB/s elsewhere.  At
``purge_delay = 0`` mimalloc decommits at free (1 MiB left of a 96 MiB drop, measured), as the
lab's 0 does.  Not modelled: the per-segment clock (``on = "activity"`` counts any use of the
heap, so it behaves as the timer while anything allocates).  The default here stays 10 ms
(mimalloc 2.1's ``purge_delay``); 2.0.9 defaults its ``decommit_delay`` to 25 ms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeperd.pacing.activity import Activity
from sweeperd.pacing.policy import IDLE_S, PageTable, Plan, View

COST_SHARE = 50
MIN_PERIOD_S = 0.005
NEVER = np.float64(np.inf)


@dataclass(frozen=True)
class DelayParams:
    purge_delay_ms: int = 10  # mimalloc v2's default (MIMALLOC_PURGE_DELAY); 0 at once, -1 never
    on: str = "timer"  # "timer" or "activity" (activity.py)


class DelayPolicy:
    name = "mimalloc-delay"
    paced = False

    def __init__(self, params: DelayParams | None = None,
                 cost_clock: Any = time.perf_counter) -> None:
        self.params = params or DelayParams()
        if self.params.purge_delay_ms < -1:
            raise ValueError(f"mimalloc-delay policy: purge_delay_ms = "
                             f"{self.params.purge_delay_ms}: allowed -1 (never), 0 (at once) "
                             "or more")
        self.activity = Activity(self.name, self.params.on)
        self.delay = max(0, self.params.purge_delay_ms) / 1000
        self.since: np.ndarray | None = None  # per page: when first seen dirty (inf: not)
        self.seen_freed = -1
        self.next_deadline = float("inf")
        self.period = max(MIN_PERIOD_S, self.delay)
        self.cost_clock = cost_clock
        self.expired = 0

    def observe(self, heap: PageTable, now: float) -> None:
        """Stamp newly dirty pages with ``now``, forget pages no longer dirty, and count the
        expired ones (a scan of the page table)."""
        t0 = self.cost_clock()
        dirty = (heap.page_span == -1) & (heap.scavenged == 0)
        if self.since is None:
            self.since = np.full(heap.npages, NEVER)
        since = self.since
        since[~dirty] = NEVER
        since[dirty & (since == NEVER)] = now
        due = since + self.delay
        self.expired = int(np.count_nonzero(due <= now))
        pending = due[(due > now) & (due != NEVER)]
        self.next_deadline = float(pending.min()) if pending.size else float("inf")
        cost = self.cost_clock() - t0
        self.period = max(MIN_PERIOD_S, COST_SHARE * cost)

    def wants_scan(self, v: View) -> bool:
        return v.freed_pages != self.seen_freed or v.now >= self.next_deadline

    def plan(self, v: View, pages: PageTable) -> Plan:
        """The plan; scans the page table when something may have changed.  At 0 (the
        freers release) and -1 (never), nothing; in activity mode, nothing at a wake without
        use unless a release is under way."""
        if self.params.purge_delay_ms <= 0:
            return Plan(0, sleep_s=IDLE_S)
        if not self.activity.active(v) and self.expired == 0:
            return Plan(0, sleep_s=IDLE_S)
        if self.since is None or self.wants_scan(v):
            self.seen_freed = v.freed_pages
            self.observe(pages, v.now)
        sleep = max(self.period, min(self.next_deadline - v.now, self.delay))
        if self.expired == 0:
            return Plan(0, sleep_s=sleep)
        since, delay, now = self.since, self.delay, v.now
        assert since is not None

        def allow(lo: int, hi: int) -> np.ndarray:
            return since[lo:hi] + delay <= now

        return Plan(self.expired, allow=allow, sleep_s=sleep)

    def released(self, pages: int, v: View) -> None:
        self.expired = max(0, self.expired - pages)
        if pages == 0:
            self.expired = 0  # the expired ones were taken back meanwhile

    def figures(self) -> dict[str, float]:
        return {"purge_delay_expired_pages": self.expired}
