"""Go's own scavenger tests as the oracle: go1.21's src/runtime/mgcscavenge_test.go, its cases
re-expressed as data against sweeperd's model (facts, not code: the cases' bitmaps and
expected answers, run through sweeperd's search, policy and release).

Mapping (README "Scavenger policies"): Go's chunk is 512 pages of 8 KiB, sweeperd's page is
Go's page (``sizeclasses.PAGE_SIZE``), so Go's ``ChunkIdx`` c, page p is sweeperd's page
``c * 512 + p`` with ``BaseChunkIdx`` at 0.  A Go allocated page is a page of an in-use span
(``page_span >= 0``); a Go scavenged bit is sweeperd's ``scavenged`` bit; Go's physical page
minimum is 1 page here (the OS page, 4 KiB, is smaller than the runtime page), so every case
with ``min > 1`` does not map.  Go's forced scavenge (``PageAlloc.Scavenge`` →
``pageAlloc.scavenge(n, nil, true)``, ``scavengeIndex.find(force=true)``) is
``scavenge.scavenge`` with no filter; its background search is the ``go`` policy's plan at
version 1.21 (the density filter of ``pacing/density.py``).  Chunks Go's tests leave
unmapped are, in sweeperd's contiguous arena, chunks of in-use pages (no candidate in them).

Cases that do not map, and why (each also a skipped param below where it is a table row):

====================================  ========================================================
TestPallocDataFindScavengeCandidate   ``min`` 2..64 rows: the physical page is never larger
  (Min2..Min64, MaxUnaligned,         than sweeperd's page, so there is no minimum run nor
  SkipSmall, SkipMisaligned,          alignment to keep.
  MaxLessThan)
``Max0Min1``                          Go reads max 0 as "at least min"; sweeperd's count of 0
                                      releases nothing (``scavenge`` is never asked for 0).
PreserveHugePage*                     Go keeps a transparent huge page whole when scavenging a
                                      private mapping; sweeperd's heap is shared memory (memfd)
                                      where THP does not apply, and 1.21 makes no huge-page
                                      calls on the heap.
TestPageAllocScavenge                 its chunk 0x1000 is 16 GiB above the first: sweeperd's
  ScavAllVeryDiscontiguous            arena is one contiguous mapping of the heap's size.
TestScavenger                         Go's pacing with 10 µs per 4 KiB of work and 1 ms wakes;
                                      sweeperd's wake is 20 ms (twenty of Go's, scavpace.py)
                                      and its controller is checked in test_scavpace.py.
TestScavChunkDataPack                 the 64-bit packing of scavChunkData: sweeperd keeps the
                                      counts in a numpy array, there is no packed word.
====================================  ========================================================
"""

from __future__ import annotations

import numpy as np
import pytest

from sweeperd.pacing import density
from sweeperd.pacing.policy import GoParams, GoPolicy, View
from sweeperd.runtime import scavenge
from sweeperd.runtime.heap import H_SCAV_SEARCH, PAGE_FREE, Heap
from sweeperd.runtime.runs import run_pages
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys.sysmem import SysMem

CP = density.CHUNK_PAGES  # Go's PallocChunkPages
assert CP == 512 and PAGE_SIZE == 8192  # Go's pallocChunkPages and pageSize on linux/amd64

# --- TestPallocDataFindScavengeCandidate ------------------------------------------------------
# (alloc BitRanges, scavenged BitRanges, min, max, want (start, n)); BitRange = (start, n)


def _candidate_cases() -> list:
    t: dict[str, tuple] = {
        "MixedMin1": ([(0, 40), (42, CP - 42)], [(0, 41), (42, CP - 42)], 1, CP, (41, 1)),
        "MultiMin1": ([(0, 63), (65, 20), (87, CP - 87)], [(86, 1)], 1, CP, (85, 1)),
    }
    for m in (1, 2, 4, 8, 16, 32, 64):
        s = f"Min{m}"
        t["AllFree" + s] = ([], [], m, CP, (0, CP))
        t["AllScavenged" + s] = ([], [(0, CP)], m, CP, (0, 0))
        t["NoneFree" + s] = ([(0, CP)], [(CP // 2, CP // 2)], m, CP, (0, 0))
        t["StartFree" + s] = ([(m, CP - m)], [], m, CP, (0, m))
        t["EndFree" + s] = ([(0, CP - m)], [], m, CP, (CP - m, m))
        t["Straddle64" + s] = ([(0, 64 - m), (64 + m, CP - (64 + m))], [], m, 2 * m,
                               (64 - m, 2 * m))
        t["BottomEdge64WithFull" + s] = ([(64, 64), (128 + 3 * m, CP - (128 + 3 * m))],
                                         [(1, 10)], m, 3 * m, (128, 3 * m))
        t["BottomEdge64WithPocket" + s] = ([(64, 62), (127, 1), (128 + 3 * m,
                                                                  CP - (128 + 3 * m))],
                                           [(1, 10)], m, 3 * m, (128, 3 * m))
        t["Max0" + s] = ([], [(0, CP - m)], m, 0, (CP - m, m))
        if m <= 8:  # (Go's map keeps the last m's rows under these two names: m = 8)
            t["OneFree"] = ([(0, 40), (40 + m, CP - (40 + m))], [], m, CP, (40, m))
            t["OneScavenged"] = ([(0, 40), (40 + m, CP - (40 + m))], [(40, 1)], m, CP, (0, 0))
        if m > 1:
            t["MaxUnaligned" + s] = ([], [(0, CP - (m * 2 - 1))], m, m - 2, (CP - m, m))
            t["SkipSmall" + s] = ([(0, 64 - m), (64, 5), (70, 11), (82, CP - 82)], [], m, m,
                                  (64 - m, m))
            t["SkipMisaligned" + s] = ([(0, 64 - m), (64, 63), (127 + m, CP - (127 + m))], [],
                                       m, m, (64 - m, m))
            t["MaxLessThan" + s] = ([], [(0, CP - m)], m, 1, (CP - m, m))
    out = []
    for name, case in sorted(t.items()):
        m, mx = case[2], case[3]
        if m > 1:
            out.append(pytest.param(*case, id=name, marks=pytest.mark.skip(
                reason="min > 1 page: sweeperd's page is never smaller than the OS page")))
        elif mx == 0:
            out.append(pytest.param(*case, id=name, marks=pytest.mark.skip(
                reason="Go reads max 0 as min; sweeperd's 0 pages asks for nothing")))
        else:
            out.append(pytest.param(*case, id=name))
    for name in ("PreserveHugePageBottom", "PreserveHugePageMiddle", "PreserveHugePageTop"):
        out.append(pytest.param([], [], 1, 1, (0, 0), id=name, marks=pytest.mark.skip(
            reason="THP: sweeperd's heap is shared memory, no huge page to keep whole")))
    return out


def _pages(ranges: list[tuple[int, int]], base: int = 0) -> np.ndarray:
    if not ranges:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.arange(base + s, base + s + n) for s, n in ranges])


def _set(heap: Heap, alloc: dict[int, list[tuple[int, int]]],
         scav: dict[int, list[tuple[int, int]]]) -> None:
    """Go's ``makePallocData`` / ``NewPageAlloc`` on sweeperd's page table: chunks not named
    in ``alloc`` are in use (unmapped in Go); named chunks free but for their alloc ranges;
    free pages scavenged where ``scav`` says."""
    heap.page_span[:] = 0  # in use (span 0: the search reads only "free or not")
    heap.scavenged[:] = 0
    for c, rs in alloc.items():
        heap.page_span[c * CP:(c + 1) * CP] = PAGE_FREE
        heap.page_span[_pages(rs, c * CP)] = 0
    for c, rs in scav.items():
        p = _pages(rs, c * CP)
        heap.scavenged[p[heap.page_span[p] == PAGE_FREE]] = 1  # (sweeperd: free pages only)
    heap.header[H_SCAV_SEARCH] = heap.npages


@pytest.mark.parametrize("alloc,scav,min_pages,max_pages,want", _candidate_cases())
def test_pallocdata_find_scavenge_candidate(alloc, scav, min_pages, max_pages, want):
    """Go: ``FindScavengeCandidate(PallocChunkPages-1, min, max)`` returns the highest run of
    free, unscavenged pages, cut to ``max`` from its top.  sweeperd: the first run
    ``scavenge.candidates(heap, max)`` returns."""
    with Heap.create(CP * PAGE_SIZE) as heap:
        _set(heap, {0: alloc}, {0: scav})
        starts, lengths = scavenge.candidates(heap, max_pages)
        got = (int(starts[0]), int(lengths[0])) if starts.size else (0, 0)
        assert got == want or (got[1] == 0 and want[1] == 0)


# --- TestPageAllocScavenge --------------------------------------------------------------------
ALL = -1  # Go's ^uintptr(0): everything
M = 1  # Go's minPages: PhysPageSize / PageSize, at least 1 (4 KiB / 8 KiB -> 1)

PAGE_ALLOC_CASES = {
    "AllFreeUnscavExhaust": ({0: [], 1: [], 2: []}, {0: [], 1: [], 2: []},
                             [(ALL, 3 * CP * PAGE_SIZE)],
                             {0: [(0, CP)], 1: [(0, CP)], 2: [(0, CP)]}),
    "NoneFreeUnscavExhaust": ({0: [(0, CP)], 1: [], 2: [(0, CP)]}, {0: [], 1: [(0, CP)], 2: []},
                              [(ALL, 0)], {0: [], 1: [(0, CP)], 2: []}),
    "ScavHighestPageFirst": ({0: []}, {0: [(M, CP - 2 * M)]}, [(1, M * PAGE_SIZE)],
                             {0: [(M, CP - M)]}),
    "ScavMultiple": ({0: []}, {0: [(M, CP - 2 * M)]},
                     [(M * PAGE_SIZE, M * PAGE_SIZE), (M * PAGE_SIZE, M * PAGE_SIZE)],
                     {0: [(0, CP)]}),
    "ScavMultiple2": ({0: [], 1: []}, {0: [(M, CP - 2 * M)], 1: [(0, CP - 2 * M)]},
                      [(2 * M * PAGE_SIZE, 2 * M * PAGE_SIZE), (M * PAGE_SIZE, M * PAGE_SIZE),
                       (M * PAGE_SIZE, M * PAGE_SIZE)],
                      {0: [(0, CP)], 1: [(0, CP)]}),
    "ScavDiscontiguous": ({0: [], 0xE: []}, {0: [(M, CP - 2 * M)], 0xE: [(2 * M, CP - 2 * M)]},
                          [(2 * M * PAGE_SIZE, 2 * M * PAGE_SIZE), (ALL, 2 * M * PAGE_SIZE),
                           (ALL, 0)],
                          {0: [(0, CP)], 0xE: [(0, CP)]}),
}


def _page_alloc_cases() -> list:
    out = [pytest.param(*v, id=k) for k, v in PAGE_ALLOC_CASES.items()]
    out.append(pytest.param({}, {}, [], {}, id="ScavAllVeryDiscontiguous", marks=pytest.mark.skip(
        reason="chunk 0x1000 lies 16 GiB up: sweeperd's arena is one contiguous mapping")))
    return out


@pytest.mark.parametrize("before_alloc,before_scav,requests,after_scav", _page_alloc_cases())
def test_page_alloc_scavenge(before_alloc, before_scav, requests, after_scav):
    """Go: ``PageAlloc.Scavenge(request)`` (forced) releases the expected bytes each time,
    highest pages first, and leaves the expected scavenged bits.  sweeperd: ``scavenge``
    (a real MADV_REMOVE) of the request in pages (rounded up: Go releases whole pages too)."""
    nchunks = max(before_alloc) + 1
    with Heap.create(nchunks * CP * PAGE_SIZE) as heap:
        _set(heap, before_alloc, before_scav)
        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True)
        for request, expect in requests:
            n = heap.npages if request == ALL else -(-request // PAGE_SIZE)
            assert scavenge.scavenge(heap, sm, n).bytes == expect
        want = np.zeros(heap.npages, dtype=np.uint8)
        for c, rs in after_scav.items():
            want[_pages(rs, c * CP)] = 1
        free = heap.page_span == PAGE_FREE  # (sweeperd keeps no bits on in-use pages)
        assert (heap.scavenged[free] == want[free]).all()


# --- TestScavengeIndex (1.21's index, the density rule) ---------------------------------------
# (marks: [(chunk, page, chunk, page)] = mark(PageBase(c0, p0), PageBase(c1, p1)),
#  finds: [(chunk, offset)] in Go's order)
INDEX_CASES = {
    "Uninitialized": ([], []),
    "OnePage": ([(0, 3, 0, 4)], [(0, 3)]),
    "FirstPage": ([(0, 0, 0, 1)], [(0, 0)]),
    "SeveralPages": ([(0, 9, 0, 14)], [(0, 13)]),
    "WholeChunk": ([(0, 0, 1, 0)], [(0, CP - 1)]),
    "LastPage": ([(0, CP - 1, 1, 0)], [(0, CP - 1)]),
    "TwoChunks": ([(0, 128, 1, 128)], [(1, 127), (0, CP - 1)]),
    "TwoChunksOffset": ([(7, 128, 8, 129)], [(8, 128), (7, CP - 1)]),
    "SevenChunksOffset": ([(6, 11, 13, 15)], [(13, 14)] + [(i, CP - 1) for i in range(12, 5, -1)]),
    "ThirtyTwoChunks": ([(0, 0, 32, 0)], [(i, CP - 1) for i in range(31, -1, -1)]),
    "ThirtyTwoChunksOffset": ([(3, 0, 35, 0)], [(i, CP - 1) for i in range(34, 2, -1)]),
    "Mark": ([(i, 0, i + 1, 0) for i in range(32)], [(i, CP - 1) for i in range(31, -1, -1)]),
    "MarkIdempotentOneChunk": ([(0, 0, 1, 0), (0, 0, 1, 0)], [(0, CP - 1)]),
    "MarkIdempotentThirtyTwoChunks": ([(0, 0, 32, 0)] * 2,
                                      [(i, CP - 1) for i in range(31, -1, -1)]),
    "MarkIdempotentThirtyTwoChunksOffset": ([(4, 0, 31, 0), (5, 0, 36, 0)],
                                            [(i, CP - 1) for i in range(35, 3, -1)]),
}
NCHUNKS = 64  # Go: NewScavengeIndex(BaseChunkIdx, BaseChunkIdx+64)


def _index_setup(heap: Heap, marks: list[tuple[int, int, int, int]]) -> GoPolicy:
    """Go's setup: every chunk dense in the last generation (AllocRange, NextGen, FreeRange)
    and empty to the scavenger (SetEmpty); then ``mark`` makes pages free and unscavenged.
    sweeperd: all pages free, scavenged but the marked ones; the 1.21 policy's index has
    seen generation 1 with every chunk full (``lastInUse`` 512)."""
    heap.page_span[:] = PAGE_FREE
    heap.scavenged[:] = 1
    for c0, p0, c1, p1 in marks:
        heap.scavenged[c0 * CP + p0: c1 * CP + p1] = 0
    heap.header[H_SCAV_SEARCH] = heap.npages
    pol = GoPolicy(GoParams("1.21"))
    assert pol.index is not None
    pol.index.gen, pol.index.last_in_use = 1, np.full(NCHUNKS, CP, dtype=np.int64)
    return pol


def _view(heap: Heap, gen: int) -> View:
    backed = heap.npages * PAGE_SIZE  # far above a goal of 0: the plan wants everything
    return View(now=0.0, backed_bytes=backed, heap_goal=0, memory_limit=0, dirty_pages=0,
                freed_pages=0, npages=heap.npages, sweepgen=2 * gen)


def _finds(starts: np.ndarray, lengths: np.ndarray) -> list[tuple[int, int]]:
    """Go's ``find`` answers for these candidate runs (highest first): each chunk holding
    candidates, top down, with the first one's top page as its offset and the others'
    ``PallocChunkPages - 1`` (find starts a lower chunk from its top)."""
    if starts.size == 0:
        return []
    pages = run_pages(starts, lengths)
    chunks = sorted({int(p) // CP for p in pages.tolist()}, reverse=True)
    top = int(pages.max())
    return [(chunks[0], top % CP)] + [(c, CP - 1) for c in chunks[1:]]


@pytest.mark.parametrize("marks,finds", list(INDEX_CASES.values()), ids=list(INDEX_CASES))
def test_scavenge_index_background(marks, finds):
    """Go "Bg/…": nothing is found before ``nextGen`` (every chunk was dense at the last
    generation change), then the marked chunks top down, and then nothing (exhausted)."""
    with Heap.create(NCHUNKS * CP * PAGE_SIZE) as heap:
        pol = _index_setup(heap, marks)
        plan = pol.plan(_view(heap, 1), heap)
        assert plan.allow is not None
        assert scavenge.candidates(heap, plan.pages, plan.allow)[0].size == 0  # find(0, 0)
        plan = pol.plan(_view(heap, 2), heap)  # nextGen
        assert plan.allow is not None
        got = scavenge.candidates(heap, plan.pages, plan.allow)
        assert _finds(*got) == finds
        assert int(got[1].sum()) == int(np.count_nonzero(heap.scavenged == 0))  # exhausted
        del plan  # (its filter holds a view of the heap)


@pytest.mark.parametrize("marks,finds", list(INDEX_CASES.values()), ids=list(INDEX_CASES))
def test_scavenge_index_force(marks, finds):
    """Go "Force/…": a forced find skips no dense chunk: the marked chunks at once."""
    with Heap.create(NCHUNKS * CP * PAGE_SIZE) as heap:
        _index_setup(heap, marks)
        got = scavenge.candidates(heap, heap.npages)  # forced: no density filter
        assert _finds(*got) == finds


def test_scavenge_index_background_mark_interleaved():
    """Go "Bg/MarkInterleaved": mark chunk i, nextGen, find chunk i; 32 times."""
    with Heap.create(NCHUNKS * CP * PAGE_SIZE) as heap:
        pol = _index_setup(heap, [])
        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True)
        for i in range(32):
            heap.scavenged[i * CP:(i + 1) * CP] = 0  # mark
            heap.header[H_SCAV_SEARCH] = heap.npages
            plan = pol.plan(_view(heap, 2 + i), heap)  # nextGen
            got = scavenge.candidates(heap, plan.pages, plan.allow)
            assert _finds(*got) == [(i, CP - 1)]
            scavenge.scavenge(heap, sm, plan.pages, plan.allow)  # Go's SetEmpty: done with it
        plan = pol.plan(_view(heap, 40), heap)
        assert scavenge.candidates(heap, plan.pages, plan.allow)[0].size == 0
        del plan  # (its filter holds a view of the heap)
