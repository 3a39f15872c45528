"""``Scavenger.wake`` carrying out each policy on a real heap with real madvise, time faked."""

from __future__ import annotations

import numpy as np
import pytest

from sweeperd.pacing import policies
from sweeperd.pacing.bgscavenge import Scavenger
from sweeperd.pacing.hugepage import PAGES_PER_HUGE
from sweeperd.pacing.scavpace import Pacer
from sweeperd.runtime import mheap, owners
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import H_HEAP_GOAL, T_MADVISE_CALLS, T_RELEASED_PAGES, Heap
from sweeperd.runtime.scavenge import ReleaseOnFree
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys.sysmem import SysMem

NPAGES = 4096  # 32 MiB


def _heap_with_freed(heap: Heap, keep_every: int) -> int:
    """Allocate the heap as 16-page spans, write them all, free all but every
    ``keep_every``-th; returns the pages freed."""
    spans = [mheap.alloc_span(heap, 0, 16)[0] for _ in range(NPAGES // 16)]
    heap.arena[:] = 0xA5
    freed = np.array([s for i, s in enumerate(spans) if i % keep_every])
    return mheap.free_spans(heap, freed)


def _run(sc: Scavenger, clock: list[float], seconds: float) -> None:
    end = clock[0] + seconds
    while clock[0] < end:
        pages, worked = sc.wake()
        clock[0] += max(sc.sleep_for(pages, worked, 0.2), 0.001)


@pytest.mark.parametrize("name", policies.POLICIES)
def test_each_policy_releases_as_it_decides_and_the_books_match_the_kernel(name):
    clock = [0.0]
    with Heap.create(NPAGES * PAGE_SIZE) as heap:
        heap.me = owners.SCAVENGER
        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True)
        sc = Scavenger(heap, sm, Pacer(fraction=0.5, ncpu=1), clock=lambda: clock[0],
                       policy=policies.make(name))
        heap.header[H_HEAP_GOAL] = 256 * PAGE_SIZE
        sc.wake()  # the first look, before anything is freed
        if policies.releases_on_free(name):
            heap.me = owners.sweeper(0)
            ReleaseOnFree.install(heap)
        freed = _heap_with_freed(heap, keep_every=4)
        _run(sc, clock, 12.0)  # past jemalloc's 10 s decay
        released = heap.scavenged.astype(bool)
        check_heap(heap)
        # the books: every page marked released holds no memory, every other page is backed
        backed = heap.arena_region.backed_in(np.arange(NPAGES) * PAGE_SIZE,
                                             np.full(NPAGES, PAGE_SIZE))
        assert backed == (NPAGES - int(released.sum())) * PAGE_SIZE
        n = int(released.sum())
        if name == "none":
            assert n == 0
        elif name == "gperftools-rate":  # ~1 page per 1,000 freed: one whole run
            assert 1 <= sc.released.runs <= 2 and n == sc.released.pages
        elif name == "hugepage-aware":  # a live span in every huge page: none is whole
            assert n == 0 and sc.policy.figures()["hugepage_kept_bytes"] == freed * PAGE_SIZE
        elif name == "jemalloc-hpa":  # 16 blocks of 192 dirty, 64 live: purged until what
            assert n == freed - 192  # stays is within 0.25 x 1,024 active pages: one block
        elif name == "tcmalloc-background":  # TCMalloc's default rate is 0: no release
            assert n == 0
        elif name == "eager":
            assert n == freed and sc.released.pages == 0  # the freer did it, not the scavenger
            assert heap.tallies[owners.sweeper(0), T_RELEASED_PAGES] == freed
            assert heap.tallies[owners.sweeper(0), T_MADVISE_CALLS] >= 1
        else:  # go (the live spans alone exceed its goal), jemalloc-decay (after its 10 s),
            assert n == freed  # mimalloc-delay: everything freed


def test_hugepage_aware_releases_only_whole_huge_pages():
    clock = [0.0]
    with Heap.create(NPAGES * PAGE_SIZE) as heap:
        heap.me = owners.SCAVENGER
        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True)
        sc = Scavenger(heap, sm, Pacer(fraction=0.5, ncpu=1), clock=lambda: clock[0],
                       policy=policies.make("hugepage-aware"))
        heap.header[H_HEAP_GOAL] = PAGE_SIZE
        spans = [mheap.alloc_span(heap, 0, 16)[0] for _ in range(NPAGES // 16)]
        heap.arena[:] = 0xA5
        # keep one span in every other huge page: those blocks are never whole
        per = PAGES_PER_HUGE // 16
        keep = {i for i in range(len(spans)) if (i // per) % 2 == 0 and i % per == 3}
        mheap.free_spans(heap, np.array([s for i, s in enumerate(spans) if i not in keep]))
        _run(sc, clock, 5.0)
        released = heap.scavenged.astype(bool).reshape(-1, PAGES_PER_HUGE)
        assert released[1::2].all() and not released[0::2].any()
        assert sc.policy.figures()["hugepage_kept_bytes"] == (
            NPAGES // 2 - len(keep) * 16) * PAGE_SIZE


def test_tcmalloc_background_releases_at_its_rate_by_subrelease_on_a_real_heap():
    """1 MiB/s for 12 s on a heap where every huge page holds live spans: only subrelease
    can give, 192 free pages (1.5 MiB) a block, so 12 MiB is 8 blocks, within one block."""
    from sweeperd.pacing.tcbackground import TcBackgroundParams, TcBackgroundPolicy

    clock = [0.0]
    with Heap.create(NPAGES * PAGE_SIZE) as heap:
        heap.me = owners.SCAVENGER
        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True)
        pol = TcBackgroundPolicy(TcBackgroundParams(release_rate_bytes_s=1 << 20))
        sc = Scavenger(heap, sm, Pacer(fraction=0.5, ncpu=1), clock=lambda: clock[0],
                       policy=pol)
        _heap_with_freed(heap, keep_every=4)
        sc.wake()
        _run(sc, clock, 12.0)
        n = int(heap.scavenged.sum())
        assert pol.prev is not None  # the last look: what the rate allowed up to it
        allowed = (1 << 20) * pol.prev / PAGE_SIZE
        assert allowed <= n + 1 and n < allowed + 192
        assert (heap.scavenged.reshape(-1, PAGES_PER_HUGE).sum(axis=1) % 192 == 0).all()
        check_heap(heap)
