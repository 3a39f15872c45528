"""The go policy at version 1.21, unit by unit over the page table: the density rule
(go1.21 runtime/mgcscavenge.go ``scavChunkData.shouldScavenge``, ``scavengeIndex.nextGen``)
and allocation-time scavenging over the memory limit (go1.21 runtime/mheap.go
``mheap.allocSpan``: ``bytesToScavenge = scav + mappedReady - memoryLimit``, forced), each
against the behaviour Go's source states; 1.19 beside it, where it differs."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeperd.bench.common import fill_heap
from sweeperd.pacing import density, policies
from sweeperd.pacing.density import CHUNK_PAGES, HI_OCC_PAGES, Index
from sweeperd.pacing.policy import GoParams, GoPolicy, View
from sweeperd.runtime import mcentral, mheap, scavenge
from sweeperd.runtime.heap import (
    H_MEMORY_LIMIT,
    H_SCAV_SEARCH,
    PAGE_FREE,
    T_ASSIST_CPU_NS,
    T_ASSIST_KERNEL_BYTES,
    T_ASSIST_RELEASED_PAGES,
    Heap,
)
from sweeperd.runtime.heapstats import read_tallies
from sweeperd.runtime.sizeclasses import CLASS_NPAGES, PAGE_SIZE
from sweeperd.sys.sysmem import MADV, Kernel, SysMem

from .daemon import Daemon


class Pages:
    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.page_span = np.full(npages, PAGE_FREE, dtype=np.int32)
        self.scavenged = np.zeros(npages, dtype=np.uint8)


def view(npages: int, sweepgen: int) -> View:
    return View(now=0.0, backed_bytes=npages * PAGE_SIZE, heap_goal=0, memory_limit=0,
                dirty_pages=0, freed_pages=0, npages=npages, sweepgen=sweepgen)


def test_the_threshold_is_gos_scavChunkHiOccPages():
    """Go: scavChunkHiOccFrac = 0.96875, scavChunkHiOccPages = uint16(0.96875 * 512) = 496;
    a chunk is scavenged only if inUse < 496."""
    assert HI_OCC_PAGES == 496 and CHUNK_PAGES == 512
    ok = density.should_scavenge(np.array([0, 495, 496, 512]), None)
    assert ok.tolist() == [True, True, False, False]
    ok = density.should_scavenge(np.array([0, 0, 495]), np.array([495, 496, 0]))
    assert ok.tolist() == [True, False, True]  # dense at the last generation: skipped


@given(st.integers(1, 5 * CHUNK_PAGES), st.data())
def test_chunk_counts_and_the_page_mask_match_a_per_page_reference(n, data):
    used = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    span = np.where(used, 0, PAGE_FREE).astype(np.int32)
    counts = density.chunk_in_use(span)
    ref = [int(used[i:i + CHUNK_PAGES].sum()) for i in range(0, n, CHUNK_PAGES)]
    assert counts.tolist() == ref
    last = np.array(data.draw(st.lists(st.integers(0, CHUNK_PAGES), min_size=len(ref),
                                       max_size=len(ref))), dtype=np.int64)
    lo = data.draw(st.integers(0, n - 1))
    hi = data.draw(st.integers(lo + 1, n))
    mask = density.allow_mask(span, last, lo, hi)
    want = [ref[p // CHUNK_PAGES] < HI_OCC_PAGES and last[p // CHUNK_PAGES] < HI_OCC_PAGES
            for p in range(lo, hi)]
    assert mask.tolist() == want


def test_1_21_skips_a_dense_chunk_and_1_19_does_not():
    """A chunk with 500 of 512 pages in use (>= 496) keeps its 12 free pages from the
    background scavenger at 1.21; a sparse chunk's go.  1.19 takes both."""
    pages = Pages(2 * CHUNK_PAGES)
    pages.page_span[:500] = 0  # chunk 0 dense
    pages.page_span[CHUNK_PAGES:CHUNK_PAGES + 10] = 0  # chunk 1 sparse
    p121 = GoPolicy(GoParams("1.21")).plan(view(pages.npages, 2), pages)
    assert p121.allow is not None
    allowed = p121.allow(0, pages.npages)
    assert not allowed[:CHUNK_PAGES].any() and allowed[CHUNK_PAGES:].all()
    p119 = GoPolicy(GoParams("1.19")).plan(view(pages.npages, 2), pages)
    assert p119.allow is None and p119.pages == p121.pages


def test_a_chunk_dense_at_the_last_cycle_stays_skipped_until_the_next():
    """Go: ``shouldScavenge`` in the chunk's current generation skips it if ``lastInUse``
    (its count when the generation moved: peak heap, at mark termination) was dense, even if
    it is sparse now; once the generation moves past, its count now alone decides."""
    pages = Pages(CHUNK_PAGES)
    pol = GoPolicy(GoParams("1.21"))
    pages.page_span[:] = 0  # full during generation 1
    pol.plan(view(pages.npages, 2), pages)
    pol.plan(view(pages.npages, 4), pages)  # generation 2 starts: the chunk was full
    pages.page_span[100:] = PAGE_FREE  # the sweep freed most of it
    p = pol.plan(view(pages.npages, 4), pages)
    assert p.allow is not None and not p.allow(0, pages.npages).any()
    p = pol.plan(view(pages.npages, 6), pages)  # generation 3: it was sparse at the change
    assert p.allow is not None and p.allow(0, pages.npages)[100:].all()


def test_the_index_snapshots_only_when_the_generation_moves():
    idx = Index()
    span = np.zeros(CHUNK_PAGES, dtype=np.int32)
    assert idx.observe(1, span) and idx.last_in_use is None  # the first: nothing before it
    assert idx.observe(2, span) and idx.last_in_use is not None
    assert idx.last_in_use.tolist() == [CHUNK_PAGES]
    span[:] = PAGE_FREE
    assert not idx.observe(2, span) and idx.last_in_use.tolist() == [CHUNK_PAGES]
    assert idx.dense_chunks(span) == 1


def test_the_version_is_checked_and_reaches_the_policy():
    assert policies.make("go", GoParams("1.19")).index is None  # type: ignore[attr-defined]
    assert policies.make("go").index is not None  # type: ignore[attr-defined]  # 1.21
    with pytest.raises(ValueError, match=r"1\.19, 1\.21"):
        GoPolicy(GoParams("1.20"))


# --- the scavenge assist (eager scavenging) on a real heap ------------------------------------

class RecordingKernel(Kernel):
    def __init__(self) -> None:
        super().__init__()
        self.advice: list[int] = []

    def madvise(self, addr: int, length: int, advice: int) -> None:
        self.advice.append(advice)
        super().madvise(addr, length, advice)


def _over_the_limit_heap(heap: Heap, over: int, k: int) -> np.ndarray:
    """2048 one-page spans, every other one of the first 1024 freed (512 free backed single
    pages: no run for a k-page span, so the next such span takes released pages); the limit
    set so that after a k-page span the books are ``over`` pages above it."""
    spans = fill_heap(heap, 6, 2048)
    mheap.free_spans(heap, spans[:1024:2])
    heap.header[H_MEMORY_LIMIT] = (2048 + k - over) * PAGE_SIZE  # (freed pages stay backed)
    return spans


def test_an_allocation_over_the_limit_releases_the_excess_top_down():
    """Go 1.21 ``allocSpan``: after taking ``scav`` released bytes, scavenge
    ``scav + mappedReady - memoryLimit`` bytes, forced, counted as releasedEager and its
    time as assist time."""
    c = next(i for i, n in enumerate(CLASS_NPAGES) if n == 2)
    with Heap.create(32 << 20) as heap:
        spans = _over_the_limit_heap(heap, 100, 2)
        hook = scavenge.ScavengeAssist(heap, SysMem(base=heap.arena.ctypes.data,
                                                    size=heap.heap_bytes, shared=True,
                                                    kernel=RecordingKernel()))
        heap.on_alloc_scav = hook
        before = heap.arena_backed_bytes()
        span, nscav, _ = mcentral.cache_span(heap, c)
        assert nscav == 2 and span >= 2048  # it took released pages
        freed = spans[:1024:2]
        top = np.sort(freed)[-100:]  # the 100 highest free backed pages went
        assert heap.scavenged[top].all() and not heap.scavenged[np.sort(freed)[:-100]].any()
        assert heap.tallies[heap.me, T_ASSIST_RELEASED_PAGES] == 100
        assert heap.tallies[heap.me, T_ASSIST_CPU_NS] > 0
        assert scavenge.over_limit_pages(heap, int(heap.header[H_MEMORY_LIMIT])) == 0
        assert before + 2 * PAGE_SIZE - heap.arena_backed_bytes() == 100 * PAGE_SIZE
        t = read_tallies(heap)
        assert t.assist_released_pages == 100 and t.on_free.pages == 0  # not the freers'
        assert t.on_free.kernel_bytes == 0  # (the kernel had all 100 pages backed)
        assert heap.tallies[heap.me, T_ASSIST_KERNEL_BYTES] == 100 * PAGE_SIZE
        assert assert_no_huge_page_calls(hook.sysmem.kernel)
        heap.on_alloc_scav = None


def assert_no_huge_page_calls(kernel: Kernel) -> bool:
    """Go 1.21 makes no sysHugePage/sysNoHugePage calls when scavenging the heap (1.19 did
    around each release on Linux); sweeperd's heap, shared memory, gets none either."""
    assert isinstance(kernel, RecordingKernel) and kernel.advice
    return not {MADV["HUGEPAGE"], MADV["NOHUGEPAGE"]} & set(kernel.advice)


def test_the_assist_ignores_the_density_rule():
    """Go: the assist scavenges with force = true, so ``shouldScavenge`` skips no dense
    chunk: free pages of a chunk the background scavenger skips are released."""
    with Heap.create(32 << 20) as heap:
        spans = fill_heap(heap, 6, 4 * CHUNK_PAGES)  # chunks 0..3 full
        freed = spans[3 * CHUNK_PAGES:3 * CHUNK_PAGES + 8]  # chunk 3: 504 in use, dense
        mheap.free_spans(heap, freed)
        pol = GoPolicy(GoParams("1.21"))
        plan = pol.plan(view(heap.npages, heap.sweepgen), heap)
        assert plan.allow is not None and not plan.allow(0, heap.npages)[freed].any()
        del plan
        heap.header[H_MEMORY_LIMIT] = (4 * CHUNK_PAGES - 5) * PAGE_SIZE  # 5 pages over
        hook = scavenge.ScavengeAssist(heap, SysMem(base=heap.arena.ctypes.data,
                                                    size=heap.heap_bytes, shared=True))
        assert hook(0) == 0  # an allocation that took no released pages does not assist
        assert hook(2) == 5  # as after an allocation of 2 released pages
        assert heap.scavenged[freed[-5:]].all() and not heap.scavenged[freed[:3]].any()


def test_no_limit_or_no_released_pages_no_assist():
    with Heap.create(32 << 20) as heap:
        _over_the_limit_heap(heap, 100, 2)
        hook = scavenge.ScavengeAssist(heap, SysMem(base=heap.arena.ctypes.data,
                                                    size=heap.heap_bytes, shared=True))
        assert hook(0) == 0
        heap.header[H_MEMORY_LIMIT] = 0
        assert hook(5) == 0
        assert heap.tallies[heap.me, T_ASSIST_RELEASED_PAGES] == 0


def test_the_background_search_skips_a_dense_chunk_on_a_real_heap():
    """The 1.21 plan carried out by the real release: a chunk with 500 pages in use keeps
    its free pages; a sparse chunk's are released."""
    with Heap.create(2 * CHUNK_PAGES * PAGE_SIZE) as heap:
        spans = fill_heap(heap, 6, 2 * CHUNK_PAGES)
        dense_free = spans[:12]  # chunk 0: 500 in use
        sparse_free = spans[CHUNK_PAGES:CHUNK_PAGES + 300]  # chunk 1: 212 in use
        mheap.free_spans(heap, np.concatenate((dense_free, sparse_free)))
        heap.header[H_SCAV_SEARCH] = heap.npages
        pol = GoPolicy(GoParams("1.21"))
        v = View(now=0.0, backed_bytes=heap.arena_backed_bytes(), heap_goal=0, memory_limit=0,
                 dirty_pages=0, freed_pages=0, npages=heap.npages, sweepgen=heap.sweepgen)
        plan = pol.plan(v, heap)
        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True)
        r = scavenge.scavenge(heap, sm, plan.pages, plan.allow)
        del plan
        assert r.pages == 300
        assert heap.scavenged[sparse_free].all() and not heap.scavenged[dense_free].any()


# --- [scavenger.go] version in the config -----------------------------------------------------

def test_the_config_defaults_to_1_21_and_takes_1_19():
    from sweeperd.daemon import config

    assert config.load(None).scavenger.go == GoParams("1.21")
    cfg = config.from_dict({"scavenger": {"go": {"version": "1.19"}}})
    assert cfg.scavenger.policy_params("go") == GoParams("1.19")


@given(st.one_of(st.text(max_size=20), st.floats(), st.integers(), st.booleans(),
                 st.lists(st.text(max_size=3), max_size=2)))
def test_the_config_refuses_any_other_version_naming_the_key(v):
    from sweeperd.daemon import config

    if v in ("1.19", "1.21"):
        return
    with pytest.raises(config.ConfigError, match=r"scavenger\.go\.version"):
        config.from_dict({"scavenger": {"go": {"version": v}}})


# --- end to end: a real daemon at the defaults (go, 1.21) -------------------------------------

SCAV_121 = re.compile(r"^scav (\d+) KiB work \(bg\), (\d+) KiB work \(eager\), (\d+) KiB now, "
                      r"(\d+)% util( \(forced\)| \[controller reset\])?$")


def _metric(body: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    assert m, name
    return float(m.group(1))


def test_a_daemon_over_its_limit_scavenges_as_it_allocates_and_says_so_in_1_21s_lines(
        tmp_path):
    """The go policy at its default version, 1.21, with a 24 MiB limit on a 128 MiB arena and
    GOGC 400 (the goal far above the limit): allocations that take released pages release
    what the heap is over the limit (sweeperd_scavenge_assist_* > 0), and ``--scavtrace``
    prints Go 1.21's lines, whose ``(eager)`` work adds up to more than nothing.  The live
    heap (32 MiB) is over the limit, so the heap is over it whatever the machine's pace: the
    scavenger releases every free page it finds, and the allocations that take them back
    must release as much again."""
    scen = tmp_path / "over.toml"
    scen.write_text('[scenario]\nname = "over-the-limit"\nheap_mib = 128\n'
                    '[[phase]]\nname = "fill"\nseconds = 2\nlive_mib = [0, 32]\n'
                    'garbage_mib_s = 8\n'
                    '[[phase]]\nname = "hold"\nseconds = 600\nlive_mib = 32\n'
                    'garbage_mib_s = 16\n')
    cfg = tmp_path / "limit.toml"
    cfg.write_text(f'[heap]\nsize_mib = 128\n[gc]\ngogc = 400\n[mutators]\nscenario = '
                   f'"{scen}"\n[scavenger]\ncpu_fraction = 0.05\nmemory_limit_mib = 24\n')
    d = Daemon("--config", str(cfg), "--sweepers", "1", "--mutators", "1", "--scavtrace")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(d.proc.stderr.readline, "")),
                              daemon=True)  # read as it writes: a full pipe would stall it
    reader.start()
    try:
        assert d.status()["scavenger"]["policy"] == "go"
        deadline = time.monotonic() + 180
        released = cpu = 0.0
        while time.monotonic() < deadline and not (released > 0 and cpu > 0):
            time.sleep(0.5)
            body = urllib.request.urlopen(d.metrics, timeout=30).read().decode()
            released = _metric(body, "sweeperd_scavenge_assist_released_bytes_total")
            cpu = _metric(body, "sweeperd_scavenge_assist_cpu_seconds_total")
        assert released > 0 and cpu > 0, "no allocation scavenged over the limit in 180 s"
        cycles = d.status()["cycle"]
        d.wait_for(lambda s: s["cycle"] >= cycles + 2, timeout=120, what="2 more cycles")
        assert d.stop() == 0
        reader.join(30)
    finally:
        d.close()
    scavs = [x for x in "".join(lines).splitlines() if x.startswith("scav ")]
    matched = [SCAV_121.match(x) for x in scavs]
    assert scavs and all(matched), scavs[:3]
    assert sum(int(m.group(2)) for m in matched if m) > 0
