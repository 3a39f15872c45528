"""Each scavenger policy's decisions on a fake clock, against a small reference computation."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from sweeperd.pacing import policies
from sweeperd.pacing.decay import H_STEPS, DecayParams, DecayPolicy, smootherstep_table
from sweeperd.pacing.hugepage import PAGES_PER_HUGE, HugepagePolicy, kept_pages, whole_free_blocks
from sweeperd.pacing.policy import View
from sweeperd.pacing.purgedelay import DelayParams, DelayPolicy
from sweeperd.pacing.releaserate import (
    DEFAULT_RELEASE_DELAY,
    MAX_RELEASE_DELAY,
    RateParams,
    RatePolicy,
)
from sweeperd.pacing.scavpace import pages_to_release, retain_goal
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

def test_purge_delay_releases_a_page_only_after_its_delay():
    pages = Pages(100)
    pol = DelayPolicy(DelayParams(purge_delay_ms=10))
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
    pol = DelayPolicy(DelayParams(purge_delay_ms=10))
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
    pol = DelayPolicy(DelayParams(purge_delay_ms=10))
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
