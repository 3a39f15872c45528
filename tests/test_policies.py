"""Each scavenger policy's decisions on a fake clock, against a small reference computation."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from sweeperd.pacing import policies
from sweeperd.pacing.decay import H_STEPS, DecayParams, DecayPolicy, smootherstep_table
from sweeperd.pacing.hpa import HpaParams, HpaPolicy
from sweeperd.pacing.hugepage import PAGES_PER_HUGE, HugepagePolicy, kept_pages, whole_free_blocks
from sweeperd.pacing.policy import View
from sweeperd.pacing.purgedelay import COST_SHARE, DelayParams, DelayPolicy
from sweeperd.pacing.releaserate import (
    DEFAULT_RELEASE_DELAY,
    MAX_RELEASE_DELAY,
    RateParams,
    RatePolicy,
)
from sweeperd.pacing.scavpace import pages_to_release, retain_goal
from sweeperd.pacing.tcbackground import TcBackgroundParams, TcBackgroundPolicy
from sweeperd.runtime.sizeclasses import PAGE_SIZE


class Pages:
    """A page table: ``page_span`` -1 free, else in use; ``scavenged`` 1 released."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.page_span = np.zeros(npages, dtype=np.int32)
        self.scavenged = np.zeros(npages, dtype=np.uint8)


def view(now: float = 0.0, **kw: int) -> View:
    base = dict(backed_bytes=0, heap_goal=0, memory_limit=0, dirty_pages=0, freed_pages=0,
                npages=1 << 20)
    base.update(kw)
    return View(now=now, **base)  # type: ignore[arg-type]


# --- jemalloc-decay ---------------------------------------------------------------------------

def test_smootherstep_table_is_jemallocs():
    """Values of jemalloc's generated smoothstep.h (smoother, 200 steps, 24-bit fixed point)."""
    assert len(H_STEPS) == 200
    assert H_STEPS[0] == 0x14 and H_STEPS[1] == 0xA5 and H_STEPS[9] == 0x4BE6
    assert H_STEPS[99] == 0x800000 and H_STEPS[149] == 0xE58000 and H_STEPS[199] == 0x1000000
    assert all(a < b for a, b in itertools.pairwise(H_STEPS))
    assert smootherstep_table(4, 8) == [26, 128, 229, 256]  # h(.25), h(.5), h(.75), h(1) * 256


def _drive_decay(pol: DecayPolicy, dirty: int, epochs: int) -> list[int]:
    """Pages released at each epoch after ``dirty`` pages were freed at once."""
    pol.plan(view(0.0, dirty_pages=0), Pages(1))  # the first look starts the epochs
    out = []
    for k in range(1, epochs + 1):
        t = k * pol.interval + 1e-9  # just past the k-th boundary
        p = pol.plan(view(t, dirty_pages=dirty), Pages(1))
        dirty -= p.pages
        pol.released(p.pages, view(t))
        assert pol.plan(view(t, dirty_pages=dirty), Pages(1)).pages == 0  # down to the limit
        out.append(p.pages)
    return out


def test_decay_releases_on_the_smootherstep_curve_over_dirty_decay_ms():
    n = 100_000
    pol = DecayPolicy(DecayParams(dirty_decay_ms=10_000))
    assert pol.interval == pytest.approx(0.05)
    released = _drive_decay(pol, n, 201)
    # reference: the frees land in the newest slot at the first epoch; after k more epochs
    # the pages allowed to stay are n * h[199 - k] >> 24
    kept = [n * H_STEPS[199 - k] >> 24 for k in range(200)] + [0]
    expect = [0] + [kept[k - 1] - kept[k] for k in range(1, 201)]
    assert released == expect
    assert sum(released) == n
    half = next(i for i, _ in enumerate(released) if sum(released[: i + 1]) >= n // 2)
    assert half * pol.interval == pytest.approx(5.0, abs=0.1)  # smootherstep(0.5) = 0.5


def test_decay_counts_only_newly_dirtied_pages_into_the_backlog():
    pol = DecayPolicy(DecayParams(dirty_decay_ms=200))  # 1 ms epochs
    pol.plan(view(0.0, dirty_pages=0), Pages(1))
    pol.plan(view(0.001, dirty_pages=500), Pages(1))
    assert pol.backlog[-1] == 500 and pol.nunpurged == 500
    pol.plan(view(0.002, dirty_pages=800), Pages(1))
    assert pol.backlog[-2:] == [500, 300]
    pol.plan(view(0.0101, dirty_pages=800), Pages(1))  # 8 epochs pass at once
    assert pol.backlog[-10:] == [500, 300] + [0] * 8
    pol.plan(view(1.0, dirty_pages=800), Pages(1))  # more than 200: the backlog is cleared
    assert sum(pol.backlog) == 0 and pol.limit == 0


def test_decay_does_not_purge_between_epochs():
    pol = DecayPolicy(DecayParams(dirty_decay_ms=10_000))
    pol.plan(view(0.0), Pages(1))
    assert pol.plan(view(0.01, dirty_pages=1000), Pages(1)).pages == 0  # same epoch


# --- gperftools-rate --------------------------------------------------------------------------

def _reference_gperftools(frees: list[int], run_pages: int, rate: float) -> list[int]:
    """gperftools' IncrementalScavenge per Delete of ``n`` pages, every release taking one run
    of ``run_pages``: the pages released after each Delete."""
    counter, out = 0, []
    for n in frees:
        counter -= n
        got = 0
        if counter < 0:
            got = run_pages
            counter = int(min(1000 / rate * got, MAX_RELEASE_DELAY))
        out.append(got)
    return out


@pytest.mark.parametrize("rate", [1.0, 2.0, 0.5])
def test_release_rate_releases_a_page_per_1000_over_rate_pages_freed(rate):
    pol = RatePolicy(RateParams(release_rate=rate))
    freed, released = 0, 0
    pol.plan(view(freed_pages=0), Pages(1))
    for _ in range(200):  # 200 looks, 1,000 one-page spans freed between two looks
        freed += 1000
        while (p := pol.plan(view(freed_pages=freed), Pages(1))).pages:
            assert p.whole_runs and p.pages == 1
            pol.released(1, view())
            released += 1
    ref = sum(_reference_gperftools([1] * 200_000, 1, rate))
    assert released == ref == pytest.approx(200_000 * rate / 1000, abs=1)


def test_release_rate_waits_by_the_pages_released_capped_and_after_nothing():
    pol = RatePolicy()
    pol.plan(view(freed_pages=0), Pages(1))
    assert pol.plan(view(freed_pages=1), Pages(1)).pages == 1
    pol.released(5000, view())  # a whole run of 5,000 pages went: wait 5,000,000, capped
    assert pol.counter == -1 + MAX_RELEASE_DELAY
    pol.counter = -1
    pol.released(0, view())  # nothing could be released
    assert pol.counter == DEFAULT_RELEASE_DELAY


# --- mimalloc-delay ---------------------------------------------------------------------------

def delay_policy(params: DelayParams) -> DelayPolicy:
    """The policy with a scan that costs nothing: its wake period is then the 5 ms floor
    whatever the machine's load (the cost clock is the policy's seam for that)."""
    return DelayPolicy(params, cost_clock=lambda: 0.0)


def test_purge_delay_wakes_at_most_every_cost_share_times_a_scans_cost():
    ticks = iter([0.0, 0.002, 1.0, 1.0])  # the first scan costs 2 ms, the second nothing
    pol = DelayPolicy(DelayParams(purge_delay_ms=10), cost_clock=lambda: next(ticks))
    pages = Pages(100)
    pages.page_span[10:20] = -1
    p = pol.plan(view(0.0, freed_pages=10), pages)
    assert p.pages == 0 and p.sleep_s == pytest.approx(COST_SHARE * 0.002)
    pages.page_span[30:40] = -1
    p = pol.plan(view(0.001, freed_pages=20), pages)
    assert p.pages == 0 and p.sleep_s == pytest.approx(0.009)  # the first page's deadline


def test_purge_delay_releases_a_page_only_after_its_delay():
    pages = Pages(100)
    pol = delay_policy(DelayParams(purge_delay_ms=10))
    pol.plan(view(0.0, freed_pages=0), pages)
    pages.page_span[10:20] = -1  # freed at t = 0.001
    p = pol.plan(view(0.001, freed_pages=10), pages)
    assert p.pages == 0 and p.sleep_s <= 0.010
    pages.page_span[50:60] = -1  # freed at t = 0.006
    assert pol.plan(view(0.006, freed_pages=20), pages).pages == 0
    p = pol.plan(view(0.0111, freed_pages=20), pages)  # 10.1 ms after the first
    assert p.pages == 10 and p.allow is not None
    assert np.flatnonzero(p.allow(0, 100)).tolist() == list(range(10, 20))
    pages.scavenged[10:20] = 1  # released
    pol.released(10, view(0.0111))
    p = pol.plan(view(0.0161, freed_pages=20), pages)
    assert np.flatnonzero(p.allow(0, 100)).tolist() == list(range(50, 60))


def test_purge_delay_forgets_a_page_taken_again_and_restamps_it_when_freed():
    pages = Pages(10)
    pol = delay_policy(DelayParams(purge_delay_ms=10))
    pages.page_span[:] = -1
    pol.plan(view(0.0, freed_pages=10), pages)
    pages.page_span[:] = 0  # all reused
    assert pol.plan(view(0.005, freed_pages=11), pages).pages == 0
    pages.page_span[:] = -1  # freed again at t = 0.008
    assert pol.plan(view(0.008, freed_pages=21), pages).pages == 0
    assert pol.plan(view(0.0179, freed_pages=21), pages).pages == 0
    assert pol.plan(view(0.0181, freed_pages=21), pages).pages == 10


def test_purge_delay_scans_only_when_something_changed():
    pages = Pages(10)
    pol = delay_policy(DelayParams(purge_delay_ms=10))
    scans = []
    orig = pol.observe
    pol.observe = lambda h, now: (scans.append(now), orig(h, now))  # type: ignore[method-assign]
    pol.plan(view(0.0, freed_pages=0), pages)
    pol.plan(view(0.1, freed_pages=0), pages)  # nothing freed, nothing due
    assert scans == [0.0]
    pages.page_span[:] = -1
    pol.plan(view(0.2, freed_pages=10), pages)
    pol.plan(view(0.205, freed_pages=10), pages)
    pol.plan(view(0.2101, freed_pages=10), pages)  # a deadline came
    assert scans == [0.0, 0.2, 0.2101]


# --- hugepage-aware ---------------------------------------------------------------------------

def test_whole_free_blocks_matches_a_per_block_reference():
    rng = np.random.default_rng(3)
    n = PAGES_PER_HUGE * 6 + 100  # a partial block at the end
    span = np.where(rng.random(n) < 0.999, -1, 0).astype(np.int32)
    span[PAGES_PER_HUGE * 2: PAGES_PER_HUGE * 3] = -1  # one surely whole block
    span[PAGES_PER_HUGE * 4 + 7] = -253  # being released by someone: still free
    span[PAGES_PER_HUGE * 4: PAGES_PER_HUGE * 5][span[PAGES_PER_HUGE * 4:
                                                      PAGES_PER_HUGE * 5] >= 0] = -1
    ref = np.zeros(n, dtype=bool)
    for b in range(0, n, PAGES_PER_HUGE):
        if b + PAGES_PER_HUGE <= n and (span[b: b + PAGES_PER_HUGE] < 0).all():
            ref[b: b + PAGES_PER_HUGE] = True
    assert ref[PAGES_PER_HUGE * 2] and ref[PAGES_PER_HUGE * 4]
    for lo, hi in [(0, n), (37, n - 3), (PAGES_PER_HUGE, PAGES_PER_HUGE * 5 + 1), (5, 6)]:
        assert (whole_free_blocks(span, lo, hi) == ref[lo:hi]).all()


def test_hugepage_keeps_partial_huge_pages_unless_above_the_memory_limit():
    pages = Pages(PAGES_PER_HUGE * 4)
    pages.page_span[:] = -1
    pages.page_span[PAGES_PER_HUGE * 3 + 5] = 0  # the top block is partly used
    pol = HugepagePolicy()
    backed = pages.npages * PAGE_SIZE
    p = pol.plan(view(0.0, backed_bytes=backed, heap_goal=PAGE_SIZE), pages)
    assert p.pages == pages_to_release(backed, retain_goal(PAGE_SIZE)) and p.allow is not None
    allowed = p.allow(0, pages.npages)
    assert allowed[: PAGES_PER_HUGE * 3].all() and not allowed[PAGES_PER_HUGE * 3:].any()
    assert pol.figures()["hugepage_kept_bytes"] == (PAGES_PER_HUGE - 1) * PAGE_SIZE
    assert kept_pages(pages) == PAGES_PER_HUGE - 1
    p = pol.plan(view(0.1, backed_bytes=backed, heap_goal=PAGE_SIZE,
                      memory_limit=backed - PAGE_SIZE), pages)
    assert p.allow is None and p.pages > 0  # above the limit: any free page may go


# --- go, none, eager; the registry ------------------------------------------------------------

def test_go_none_and_eager_plans():
    v = view(backed_bytes=100 << 20, heap_goal=10 << 20, memory_limit=0)
    assert policies.make("go").plan(v, Pages(1)).pages == pages_to_release(
        100 << 20, retain_goal(10 << 20))
    assert policies.make("none").plan(v, Pages(1)).pages == 0
    assert policies.make("eager").plan(v, Pages(1)).pages == 0
    assert {"eager"} == policies.RELEASES_ON_FREE


def test_every_name_makes_its_policy_and_unknown_names_are_refused():
    for name in policies.POLICIES:
        pol = policies.make(name, policies.default_params(name))
        assert pol.name == name
        assert pol.paced == (name in ("go", "hugepage-aware"))
    with pytest.raises(ValueError, match="unknown scavenger policy 'tcmalloc'"):
        policies.make("tcmalloc")
    assert replace(DecayParams(), dirty_decay_ms=5).dirty_decay_ms == 5


# --- helpers for the block policies -----------------------------------------------------------

def _carry_out(pol, plan, pages: Pages, now: float) -> int:
    """Release what ``plan`` says as the scavenger would: dirty pages it allows, highest first,
    up to ``plan.pages``; tells the policy.  Returns the pages released."""
    dirty = (pages.page_span == -1) & (pages.scavenged == 0)
    if plan.allow is not None:
        dirty &= plan.allow(0, pages.npages)
    take = np.flatnonzero(dirty)[::-1][: plan.pages]
    pages.scavenged[take] = 1
    pol.released(int(take.size), view(now))
    return int(take.size)


def _hview(pages: Pages, now: float, **kw: int) -> View:
    """A view whose counters match ``pages``."""
    in_use = int((pages.page_span >= 0).sum())
    dirty = int(((pages.page_span == -1) & (pages.scavenged == 0)).sum())
    return view(now, npages=pages.npages, in_use_pages=in_use, dirty_pages=dirty, **kw)


def _drive(pol, pages: Pages, now: float, **kw: int) -> int:
    """One wake: plan and carry out until the policy wants nothing; the pages released."""
    got = 0
    while (p := pol.plan(_hview(pages, now, **kw), pages)).pages > 0:
        n = _carry_out(pol, p, pages, now)
        got += n
        if n == 0:
            break
    return got


def _dirty(pages: Pages) -> int:
    return int(((pages.page_span == -1) & (pages.scavenged == 0)).sum())


# --- jemalloc-hpa -----------------------------------------------------------------------------

def _hpa_heap() -> Pages:
    """8 blocks: 0-1 empty (all free), 2-7 each with 64 pages in use and 192 free, block 7's
    free pages fewer (96 in use)."""
    pages = Pages(PAGES_PER_HUGE * 8)
    pages.page_span[:] = -1
    for b in range(2, 8):
        lo = b * PAGES_PER_HUGE
        pages.page_span[lo: lo + (96 if b == 7 else 64)] = 0
    return pages


def test_hpa_purges_whole_blocks_until_dirty_is_within_the_ratio_of_active():
    pages = _hpa_heap()
    active = int((pages.page_span >= 0).sum())  # 5 * 64 + 96 = 416
    pol = HpaPolicy(HpaParams(dirty_mult=2.0))  # the cap: 832 of 1,632 dirty pages
    released = _drive(pol, pages, 0.0)  # the first purge: at once
    assert _dirty(pages) <= 2.0 * active < _dirty(pages) + 192  # no more than needed
    # jemalloc's order: the empty blocks first, then the most dirty, the highest first among
    # equals (block 7, less dirty, not reached); every chosen block goes whole
    per_block = pages.scavenged.reshape(8, PAGES_PER_HUGE).sum(axis=1)
    assert per_block.tolist() == [PAGES_PER_HUGE] * 2 + [0, 0, 0, 192, 192, 0]
    assert released == per_block.sum()
    assert pol.figures()["hpa_ndirty_max_pages"] == 2 * active


def test_hpa_purges_at_most_every_min_purge_interval():
    pages = _hpa_heap()
    pol = HpaPolicy(HpaParams(dirty_mult=0.25, min_purge_interval_ms=5000))
    assert _drive(pol, pages, 0.0) > 0
    pages.page_span[PAGES_PER_HUGE * 7: PAGES_PER_HUGE * 7 + 96] = -1  # block 7 freed
    v = _hview(pages, 4.9)
    assert v.dirty_pages > 0.25 * v.in_use_pages  # over the cap again ...
    p = pol.plan(v, pages)
    assert p.pages == 0 and p.sleep_s == pytest.approx(0.1)  # ... but within the interval
    assert _drive(pol, pages, 5.0) > 0  # the interval has passed
    v = _hview(pages, 5.0)
    assert v.dirty_pages <= 0.25 * v.in_use_pages


def test_hpa_dirty_mult_minus_one_never_purges_and_bad_values_are_refused():
    pages = _hpa_heap()
    pol = HpaPolicy(HpaParams(dirty_mult=-1))
    assert _drive(pol, pages, 0.0) == 0 and _drive(pol, pages, 100.0) == 0
    with pytest.raises(ValueError, match=r"jemalloc-hpa policy: dirty_mult = -0\.5"):
        HpaPolicy(HpaParams(dirty_mult=-0.5))
    with pytest.raises(ValueError, match="jemalloc-hpa policy: on = 'sometimes'"):
        HpaPolicy(HpaParams(on="sometimes"))


@pytest.mark.parametrize("on", ["timer", "activity"])
def test_hpa_in_activity_mode_purges_only_where_the_heap_was_used(on):
    """A free (freed_pages moves) or an allocation (allocated_bytes moves) is use; the counters
    standing still is idleness: a timer purges on time, activity mode holds the pages."""
    pages = Pages(PAGES_PER_HUGE * 4)
    pol = HpaPolicy(HpaParams(on=on, min_purge_interval_ms=5000))
    assert _drive(pol, pages, 0.0, freed_pages=0) == 0  # all in use
    pages.page_span[: PAGES_PER_HUGE] = -1
    assert _drive(pol, pages, 1.0, freed_pages=1) > 0  # freed: the first purge, at once
    pages.page_span[PAGES_PER_HUGE: 2 * PAGES_PER_HUGE] = -1
    assert _drive(pol, pages, 2.0, freed_pages=2) == 0  # over the cap, within the interval
    held = _drive(pol, pages, 10.0, freed_pages=2) + _drive(pol, pages, 100.0, freed_pages=2)
    if on == "timer":
        assert held == PAGES_PER_HUGE  # purged on time
        return
    assert held == 0 and _dirty(pages) == PAGES_PER_HUGE  # idle: kept
    assert _drive(pol, pages, 101.0, freed_pages=2, allocated_bytes=64) == PAGES_PER_HUGE


# --- tcmalloc-background ----------------------------------------------------------------------

def test_tcmalloc_background_releases_rate_times_time_from_whole_free_blocks():
    pages = Pages(PAGES_PER_HUGE * 64)
    pages.page_span[:] = -1  # all free: whole free blocks of 256 pages
    rate = 3 * PAGE_SIZE * PAGES_PER_HUGE // 2  # 1.5 blocks a second: overshoot, then carry
    pol = TcBackgroundPolicy(TcBackgroundParams(release_rate_bytes_s=rate))
    released = 0
    for k in range(21):  # a look a second (TCMalloc's background sleep) for 20 s
        released += _drive(pol, pages, float(k))
        allowed = rate * k / PAGE_SIZE
        assert allowed <= released + 1 and released < allowed + PAGES_PER_HUGE
    assert released == 30 * PAGES_PER_HUGE  # 20 s at 1.5 blocks/s: exactly 30 blocks
    assert pol.figures()["tcmalloc_release_credit_bytes"] == 0


def test_tcmalloc_background_default_rate_is_tcmallocs_zero_and_releases_nothing():
    pages = Pages(PAGES_PER_HUGE * 4)
    pages.page_span[:] = -1
    pol = TcBackgroundPolicy()
    assert pol.params.release_rate_bytes_s == 0
    assert sum(_drive(pol, pages, float(k)) for k in range(100)) == 0


def test_tcmalloc_background_subreleases_only_after_whole_blocks_and_sparsest_first():
    pages = Pages(PAGES_PER_HUGE * 4)
    pages.page_span[:] = -1
    pages.page_span[0:200] = 0  # block 0: 200 in use (56 free)
    pages.page_span[256:266] = 0  # block 1: 10 in use (246 free), the sparsest
    # block 2: all free; block 3: 100 in use
    pages.page_span[768:868] = 0
    pol = TcBackgroundPolicy(TcBackgroundParams(release_rate_bytes_s=300 * PAGE_SIZE,
                                                skip_subrelease_interval_s=0))
    _drive(pol, pages, 0.0)
    assert _drive(pol, pages, 1.0) == 256 + 246  # block 2 whole, then block 1 (sparsest)
    per_block = pages.scavenged.reshape(4, PAGES_PER_HUGE).sum(axis=1)
    assert per_block.tolist() == [0, 246, 256, 0]
    assert pol.credit == (300 - 502) * PAGE_SIZE  # released ahead: carried


@pytest.mark.parametrize("interval", [10.0, 0.0])
def test_tcmalloc_background_skip_subrelease_keeps_what_a_recent_peak_needed(interval):
    """TCMalloc's filler subreleases at most (in use + free in partly used huge pages) - the
    peak in use over the interval: after a fall in demand, the pages the peak used stay."""
    pages = Pages(PAGES_PER_HUGE * 2)  # all in use: the peak, 512
    pol = TcBackgroundPolicy(TcBackgroundParams(release_rate_bytes_s=1 << 30,
                                                skip_subrelease_interval_s=interval))
    assert _drive(pol, pages, 0.0) == 0
    pages.page_span[0:100] = -1  # demand falls to 312: 100 + 100 free in partly used blocks
    pages.page_span[256:356] = -1
    got = _drive(pol, pages, 1.0)
    if interval == 0:
        assert got == 200  # no such rule: everything free goes
        return
    assert got == 0  # 312 + 200 - 512 = 0: kept for a return to the peak
    assert pol.credit == 0  # a request not met is not carried over
    assert _drive(pol, pages, 20.0) == 200  # the peak has aged out of the interval


# --- activity mode, and the values 0 and -1 ---------------------------------------------------

@pytest.mark.parametrize("on", ["timer", "activity"])
def test_decay_in_activity_mode_holds_while_idle_and_releases_when_allocation_resumes(on):
    pol = DecayPolicy(DecayParams(dirty_decay_ms=1000, on=on))  # 5 ms epochs
    pages, dirty = Pages(1), 1000
    assert pol.plan(view(0.0, dirty_pages=0), pages).pages == 0
    assert pol.plan(view(0.006, dirty_pages=dirty, freed_pages=1000), pages).pages == 0
    idle = 0
    for t in (0.5, 2.0, 60.0):  # the counters stand still
        p = pol.plan(view(t, dirty_pages=dirty, freed_pages=1000), pages)
        dirty -= p.pages
        idle += p.pages
    if on == "timer":
        assert idle == 1000  # decayed on time
        return
    assert idle == 0  # idle: kept, however long
    p = pol.plan(view(61.0, dirty_pages=1000, freed_pages=1000, allocated_bytes=8), pages)
    assert p.pages == 1000  # used again: 200+ epochs passed at once, the backlog is gone


@pytest.mark.parametrize("on", ["timer", "activity"])
def test_purge_delay_in_activity_mode_holds_while_idle_and_releases_when_used(on):
    pages = Pages(100)
    pol = delay_policy(DelayParams(purge_delay_ms=10, on=on))
    pol.plan(view(0.0, freed_pages=0), pages)
    pages.page_span[10:20] = -1
    assert pol.plan(view(0.001, freed_pages=10), pages).pages == 0  # stamped at its free
    idle = [pol.plan(view(t, freed_pages=10), pages).pages for t in (0.5, 5.0)]
    if on == "timer":
        assert idle[0] == 10
        return
    assert idle == [0, 0]
    assert pol.plan(view(6.0, freed_pages=10, allocated_bytes=1), pages).pages == 10


def test_decay_and_delay_zero_release_on_free_and_minus_one_never():
    assert policies.releases_on_free("jemalloc-decay", DecayParams(dirty_decay_ms=0))
    assert policies.releases_on_free("mimalloc-delay", DelayParams(purge_delay_ms=0))
    assert policies.releases_on_free("eager") and not policies.releases_on_free("jemalloc-decay")
    for params in (DecayParams(dirty_decay_ms=-1), DelayParams(purge_delay_ms=-1),
                   DecayParams(dirty_decay_ms=0), DelayParams(purge_delay_ms=0)):
        name = "jemalloc-decay" if isinstance(params, DecayParams) else "mimalloc-delay"
        never = -1 in (getattr(params, "dirty_decay_ms", 0), getattr(params, "purge_delay_ms", 0))
        assert policies.releases_on_free(name, params) is not never
        pol = policies.make(name, params)
        pages = Pages(10)
        pages.page_span[:] = -1
        for t in (0.0, 1.0, 100.0, 10_000.0):  # the scavenger never releases: at 0 the
            assert pol.plan(view(t, dirty_pages=10, freed_pages=int(t) + 10), pages).pages == 0


def test_decay_and_delay_refuse_values_below_minus_one_by_name():
    with pytest.raises(ValueError, match="jemalloc-decay policy: dirty_decay_ms = -5"):
        DecayPolicy(DecayParams(dirty_decay_ms=-5))
    with pytest.raises(ValueError, match="mimalloc-delay policy: purge_delay_ms = -2"):
        DelayPolicy(DelayParams(purge_delay_ms=-2))
    with pytest.raises(ValueError, match="mimalloc-delay policy: on = 'idle'"):
        DelayPolicy(DelayParams(on="idle"))
    with pytest.raises(ValueError, match="tcmalloc-background policy: release_rate_bytes_s"):
        TcBackgroundPolicy(TcBackgroundParams(release_rate_bytes_s=-1))
