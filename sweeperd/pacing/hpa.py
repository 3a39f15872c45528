"""The ``jemalloc-hpa`` policy: dirty pages capped at a ratio of active ones (jemalloc's HPA).

Theory of operation (after jemalloc 5.3's src/hpa.c, src/psset.c and
include/jemalloc/internal/hpa_opts.h)
------------------------------------------------------------------------------------------
jemalloc's hugepage allocator (HPA, ``opt.hpa``) carves small extents out of 2 MiB "pageslabs"
and purges by a ratio, not by age: it purges while the shard's dirty pages exceed
``dirty_mult`` × its active pages (``hpa_should_purge``: ``ndirty > fxp_mul_frac(nactive,
dirty_mult)``), one pageslab at a time (``hpa_try_purge`` purges every dirty page of the slab
``psset_pick_purge`` picks: empty slabs first, then the slabs with the most dirty pages), and
it purges at most once per ``min_purge_interval_ms`` (``hpa_min_purge_interval_passed``; the
first purge is at once).  Defaults (``HPA_SHARD_OPTS_DEFAULT``): ``dirty_mult`` 25%,
``min_purge_interval_ms`` 5,000; ``hpa_dirty_mult:-1`` disables purging.  This is the "cap the
dirty memory at a fraction of the live" that users ask jemalloc for (jemalloc#2688, #2596).

Here a pageslab is a 2 MiB-aligned block of the page heap (256 pages of 8 KiB), "active" is
the pages of in-use spans (``View.in_use_pages``), and "dirty" the free pages not released
since last used.  At a wake where the cap is exceeded and the interval has passed, the policy
scans the page table once (per block: dirty and in-use pages), chooses blocks in jemalloc's
order — empty ones first, then by most dirty pages, the highest address first among equals —
until what stays dirty is within the cap, and releases every dirty page of the chosen blocks
(the scavenger carries that out across wakes if it takes longer than one).  So after a purge
``dirty ≤ dirty_mult × active`` (unless pages were freed meanwhile), and two purges are at
least ``min_purge_interval_ms`` apart.

``on``: ``"timer"`` is jemalloc with ``background_thread:true`` (``hpa_time_until_deferred_work``
sleeps until the interval has passed); ``"activity"`` is jemalloc's default, no background
thread: the deferred work runs only from ``hpa_alloc``/``hpa_dalloc``, so an idle process
keeps its dirty pages (``activity.py``).  jemalloc 5.3.0 checked the interval only for the
background thread's sleep, and its allocation path purged whenever over the cap; later
jemalloc (the source read: ``hpa_shard_maybe_do_deferred_work``) checks it on every path, as
both modes do here.

Not modelled: hugification (``hugification_threshold`` 95%, ``hugify_delay_ms`` 10 s: jemalloc
asks the kernel for a huge page once a slab is that full, and purging one dehugifies it; here
every block is plain pages, so jemalloc's preference for purging non-hugified slabs first has
nothing to choose between); slab sizes (``slab_max_alloc`` 64 KiB: larger extents bypass the
HPA in jemalloc, while every span here is in a block); psset's size-class quantisation of the
dirty counts that orders its purge lists (exact counts here); ``experimental_max_purge_nhp``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweeperd.pacing.activity import Activity
from sweeperd.pacing.hugepage import block_counts, blocks_allow
from sweeperd.pacing.policy import IDLE_S, PageTable, Plan, View

NEVER = -1.0  # dirty_mult: never purge (jemalloc's (fxp_t)-1)


@dataclass(frozen=True)
class HpaParams:
    dirty_mult: float = 0.25  # jemalloc's default (opt.hpa_dirty_mult, FXP_INIT_PERCENT(25))
    min_purge_interval_ms: int = 5000  # jemalloc's default (opt.hpa_min_purge_interval_ms)
    on: str = "timer"  # "timer" (a background thread) or "activity" (activity.py)


def purge_order(dirty: np.ndarray, used: np.ndarray) -> np.ndarray:
    """The blocks holding dirty pages in jemalloc's purge order: empty ones first, then by
    most dirty pages; the highest address first among equals."""
    idx = np.flatnonzero(dirty > 0)[::-1]  # highest first: a stable sort keeps it for ties
    key = np.where(used[idx] == 0, -(1 << 40), -dirty[idx])
    return idx[np.argsort(key, kind="stable")]


def choose(dirty: np.ndarray, used: np.ndarray, ndirty_max: int) -> np.ndarray:
    """The blocks to purge so that at most ``ndirty_max`` dirty pages stay (a bool per
    block): whole blocks in purge order until the rest is within the cap."""
    chosen = np.zeros(dirty.size, dtype=bool)
    excess = int(dirty.sum()) - ndirty_max
    for b in purge_order(dirty, used):
        if excess <= 0:
            break
        chosen[b] = True
        excess -= int(dirty[b])
    return chosen


class HpaPolicy:
    name = "jemalloc-hpa"
    paced = False

    def __init__(self, params: HpaParams | None = None) -> None:
        self.params = params or HpaParams()
        p = self.params
        if not (p.dirty_mult >= 0 or p.dirty_mult == NEVER):
            raise ValueError(f"jemalloc-hpa policy: dirty_mult = {p.dirty_mult} is neither "
                             ">= 0 nor -1 (never)")
        if p.min_purge_interval_ms < 0:
            raise ValueError(f"jemalloc-hpa policy: min_purge_interval_ms = "
                             f"{p.min_purge_interval_ms} is below 0")
        self.activity = Activity(self.name, p.on)
        self.interval = p.min_purge_interval_ms / 1000
        self.last_purge: float | None = None  # jemalloc's shard->last_purge (None: never)
        self.pending = 0  # pages of the chosen blocks not yet released
        self.allow = blocks_allow(np.zeros(0, dtype=bool))
        self.ndirty_max = 0
        self.purges = 0

    def plan(self, v: View, pages: PageTable) -> Plan:
        active = self.activity.active(v)
        if self.pending > 0:  # a purge under way: carry it out
            return Plan(self.pending, allow=self.allow, sleep_s=0.0)
        if self.params.dirty_mult == NEVER or not active:
            return Plan(0, sleep_s=IDLE_S)
        self.ndirty_max = int(v.in_use_pages * self.params.dirty_mult)
        if v.dirty_pages <= self.ndirty_max:  # hpa_should_purge, from the counters: O(1)
            return Plan(0, sleep_s=IDLE_S)
        if self.last_purge is not None and v.now - self.last_purge < self.interval:
            return Plan(0, sleep_s=min(IDLE_S, self.last_purge + self.interval - v.now))
        dirty, used = block_counts(pages)
        chosen = choose(dirty, used, self.ndirty_max)
        self.pending = int(dirty[chosen].sum())
        if self.pending == 0:
            return Plan(0, sleep_s=IDLE_S)
        self.last_purge = v.now
        self.purges += 1
        self.allow = blocks_allow(chosen)
        return Plan(self.pending, allow=self.allow, sleep_s=0.0)

    def released(self, pages: int, v: View) -> None:
        self.pending = 0 if pages == 0 else max(0, self.pending - pages)

    def figures(self) -> dict[str, float]:
        return {"hpa_ndirty_max_pages": self.ndirty_max}
