"""The page heap (Go's mheap): spans from free page runs, and freeSpan.

Theory of operation
-------------------
Free pages are those with ``page_span == -1``; maximal runs of them are the free runs, so
freeing a span coalesces it with its free neighbours by construction (Go's page allocator is a
bitmap for the same reason).  Allocation takes the lowest-addressed run that fits, preferring
runs whose pages are all unscavenged (still backed by memory) over runs that would have to be
faulted back in; the scavenger releases from the highest addresses down, so the two meet
rarely.  ``H_SEARCH_ADDR`` is a lower bound on the first free page (every page below it is in
use), which keeps searches short on a full heap.

Every page freed is tallied (``T_FREED_PAGES``: what gperftools' release rate counts), and a
process that installed ``heap.on_free`` (the ``eager`` policy) releases what it freed at once.

Allocating a span clears the scavenged bits of its pages and reports how many were set: those
pages are unbacked (released, or never touched), and they are **committed** first (Go's
``sysUsed``): ``MADV_POPULATE_WRITE`` (else ``fallocate``) on the arena, one call per
contiguous run (``SharedRegion.commit``), so the kernel backs them at allocation and never at
a mutator's first write.  A memory cgroup does not answer a
charge over its limit with an error but with its OOM killer (measured on Linux 6.18: write,
``MADV_POPULATE_WRITE`` and ``fallocate`` alike), so before committing, the arena's true
backing plus the pages asked for is checked against ``H_COMMIT_LIMIT`` (set by the coordinator
from the cgroup or the host, ``sys/cgroup.py``): over it, or a commit the kernel refuses, is
:class:`~sweeperd.errors.OutOfMemory` — the mutators' out-of-memory wait until a GC frees
spans — tallied in ``T_COMMIT_FAILURES``, and nothing of the heap changed.  Unscavenged pages
(still backed) cost nothing: allocation prefers them.

Invariants kept: an allocated run never overlaps an in-use span; a freed span's pages all
become free with their scavenged bits clear (they were in use, so backed); ``H_SEARCH_ADDR``
never exceeds the first free page.  Every mutation here runs under the heap lock (Go's
``mheap_.lock``): the allocating entry points take it (it nests), the helpers assert it;
:func:`free_spans` is the documented exception (its stores are ordered instead).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sweeperd.errors import HeapCorrupt, OutOfMemory
from sweeperd.runtime import kernels
from sweeperd.runtime.heap import (
    C_COMMITTING_PAGES,
    C_IN_USE_PAGES,
    C_OCCUPIED_PAGES,
    C_SCAVENGED_PAGES,
    C_SPANS_IN_USE,
    H_COMMIT_LIMIT,
    H_SCAV_SEARCH,
    H_SEARCH_ADDR,
    PAGE_FREE,
    SPAN_DEAD,
    SPAN_IN_USE,
    T_COMMIT_FAILURES,
    T_FREED_PAGES,
    Heap,
    span_ix,
)
from sweeperd.runtime.runs import first_run, run_pages, runs
from sweeperd.runtime.sizeclasses import CLASS_NELEMS, CLASS_NPAGES, CLASS_NWORDS, PAGE_SIZE
from sweeperd.runtime.spanset import SET_NONE
from sweeperd.sys import failpoint

SEARCH_WINDOW = 4096  # pages a search looks at first; doubled until it finds what it needs


def _windows(heap: Heap, lo: int, need: int) -> Iterator[int]:
    """Ends of the growing windows ``[lo, end)`` a search from ``lo`` looks in: a first
    that holds ``need`` pages, doubled until the heap's end.  A search that finds what it
    wants in a window has found the same as a search of the whole rest of the heap would
    (the first fit from ``lo``), at the cost of the window, not of the heap."""
    w = max(SEARCH_WINDOW, 4 * need)
    while True:
        end = min(heap.npages, lo + w)
        yield end
        if end >= heap.npages:
            return
        w *= 2


def find_run(heap: Heap, npages: int) -> int:
    """Start page of the free run :func:`alloc_span` would take, or -1 if none fits: the
    first run of ``npages`` free backed pages from the search hint, else the first of free
    pages at all."""
    with heap.lock:  # it tightens H_SEARCH_ADDR while it is there
        lo = int(heap.header[H_SEARCH_ADDR])
        for end in _windows(heap, lo, 1):
            free = heap.page_span[lo:end] == PAGE_FREE
            if free.any():
                lo += int(np.argmax(free))
                break
        else:
            heap.header[H_SEARCH_ADDR] = heap.npages
            return -1
        heap.header[H_SEARCH_ADDR] = lo
        for want_backed in (True, False):
            for end in _windows(heap, lo, npages):
                free = heap.page_span[lo:end] == PAGE_FREE
                if want_backed:
                    free &= heap.scavenged[lo:end] == 0
                start = first_run(free, npages)
                if start >= 0:
                    return lo + start
    return -1


def _carve(heap: Heap, lo: int, count: int, npages: int, backed: bool,
           taken: np.ndarray | None = None, compiled: bool | None = None) -> np.ndarray:
    """The first ``count`` spans of ``npages`` pages that free runs from ``lo`` hold, each
    run cut into spans from its start: runs of backed pages (``backed``), else of free pages
    at all less the spans ``taken`` already.  Offsets from ``lo``, ascending.  Compiled
    (kernels.carve) when the kernels are there: the same spans, one scan."""
    if compiled is not False and kernels.enabled():
        out = np.empty(count, dtype=np.int64)
        n = kernels.carve(kernels.tables(heap), lo, count, npages, backed,
                          None if taken is None else np.ascontiguousarray(taken, np.int64), out)
        return out[:n]
    for end in _windows(heap, lo, count * npages):
        m = heap.page_span[lo:end] == PAGE_FREE
        if backed:
            m &= heap.scavenged[lo:end] == 0
        if taken is not None and taken.size:
            pages = (taken[:, None] + np.arange(npages)).ravel()
            m[pages[pages < m.size]] = False
        starts, lengths = runs(m)
        per = lengths // npages
        ok = per > 0
        starts, per = starts[ok], per[ok]
        take = (np.repeat(starts - (np.cumsum(per) - per) * npages, per)
                + np.arange(int(per.sum())) * npages)[:count]
        if take.size == count:
            break
    return take


def _first_free(heap: Heap, lo: int, count: int, backed: bool) -> np.ndarray:
    """The first ``count`` free pages from ``lo`` that are backed (``backed``) or not,
    ascending, offsets from ``lo``; fewer if the heap has fewer."""
    for end in _windows(heap, lo, count):
        m = heap.page_span[lo:end] == PAGE_FREE
        m &= (heap.scavenged[lo:end] == 0) if backed else (heap.scavenged[lo:end] != 0)
        take = np.flatnonzero(m)[:count]
        if take.size == count:
            break
    return take


def init_spans(heap: Heap, starts: np.ndarray, npages: int, sizeclass: int) -> int:
    """Turn free runs ``[start, start+npages)`` into fresh in-use spans of ``sizeclass``.

    Fresh spans are swept (sweepgen = h), empty, and in no mcentral set (the caller caches
    them or pushes them).  Returns how many of their pages were scavenged (now cleared).
    """
    heap.require_lock("mheap.init_spans")
    if starts.size == 0:
        return 0
    if npages == 1:
        pages = starts
    else:
        pages = (starts[:, None] + np.arange(npages)).ravel()
    if (heap.page_span[pages] != PAGE_FREE).any():
        raise HeapCorrupt("init_spans: run overlaps an in-use span or pages being scavenged")
    unbacked = heap.scavenged[pages] != 0
    nscav = int(np.count_nonzero(unbacked))
    if nscav:  # in flight until counted backed below: the kernel may back them first
        heap.count(C_COMMITTING_PAGES, nscav)
        try:
            commit(heap, pages[unbacked] if nscav < unbacked.size else pages)
        except BaseException:
            heap.count(C_COMMITTING_PAGES, -nscav)
            raise
    h = heap.sweepgen
    heap.page_span[pages] = np.repeat(starts, npages) if npages > 1 else starts
    heap.scavenged[pages] = 0
    nw = int(CLASS_NWORDS[sizeclass])
    heap.bits[:, :nw, starts] = 0
    heap.span_npages[starts] = npages
    heap.span_class[starts] = sizeclass
    heap.span_nelems[starts] = CLASS_NELEMS[sizeclass]
    heap.span_alloc_count[starts] = 0
    heap.span_specials[starts] = 0
    heap.span_freeindex[starts] = 0
    heap.span_set[starts] = SET_NONE
    heap.span_sweptgen[starts] = h
    heap.span_sweepgen[starts] = h
    heap.span_state[starts] = SPAN_IN_USE  # last: the span exists from here on
    # in this order, a reader between two counts never sees negative free bytes
    heap.count(C_SCAVENGED_PAGES, -nscav)
    heap.count(C_COMMITTING_PAGES, -nscav)
    heap.count(C_IN_USE_PAGES, npages * int(starts.size))
    heap.count(C_SPANS_IN_USE, int(starts.size))
    return nscav


def commit_room(heap: Heap) -> int:
    """Pages that may still be committed under ``H_COMMIT_LIMIT`` (a large number if none)."""
    limit = int(heap.header[H_COMMIT_LIMIT])
    if limit <= 0:
        return 1 << 62
    return max(limit - heap.arena_backed_bytes(), 0) // PAGE_SIZE


def commit(heap: Heap, pages: np.ndarray) -> None:
    """Back the unbacked heap ``pages`` (ascending) before a span takes them (module header).
    Raises :class:`~sweeperd.errors.OutOfMemory`, tallied, when the commit limit or the
    kernel says no."""
    heap.require_lock("mheap.commit")
    limit = int(heap.header[H_COMMIT_LIMIT])
    if limit > 0 and commit_room(heap) < pages.size:
        heap.tally(T_COMMIT_FAILURES, 1)
        raise OutOfMemory(
            f"committing {pages.size * PAGE_SIZE} bytes would take the heap's backing "
            f"({heap.arena_backed_bytes()} bytes) past its commit limit of {limit} bytes")
    brk = np.flatnonzero(np.diff(pages) != 1) + 1
    first = pages[np.concatenate(([0], brk))]
    last = pages[np.concatenate((brk - 1, [pages.size - 1]))]
    try:
        heap.arena_region.commit(first * PAGE_SIZE, (last - first + 1) * PAGE_SIZE)
    except OSError as e:
        heap.tally(T_COMMIT_FAILURES, 1)
        raise OutOfMemory(f"the kernel would not back {pages.size * PAGE_SIZE} bytes of "
                          f"the heap: {e}") from e


def alloc_span(heap: Heap, sizeclass: int, npages: int | None = None) -> tuple[int, int]:
    """Allocate one span (Go's ``mheap.alloc``): returns (start page, scavenged pages)."""
    if npages is None:
        if sizeclass == 0:
            raise ValueError("a large (class 0) span needs an explicit page count")
        npages = int(CLASS_NPAGES[sizeclass])
    elif sizeclass != 0 and npages != CLASS_NPAGES[sizeclass]:
        raise ValueError(f"class {sizeclass} spans have {CLASS_NPAGES[sizeclass]} pages")
    if npages <= 0:
        raise ValueError(f"span page count must be positive, got {npages}")
    with heap.lock:
        start = find_run(heap, npages)
        if start < 0:
            raise OutOfMemory(f"no free run of {npages} pages in a heap of {heap.npages} pages")
        nscav = init_spans(heap, np.array([start], dtype=np.int64), npages, sizeclass)
    return start, nscav


def alloc_spans(heap: Heap, sizeclass: int, count: int) -> tuple[np.ndarray, int]:
    """Allocate up to ``count`` spans of a small class at once, under one lock.

    One-page classes take the lowest free pages, unscavenged ones first, in one search;
    multi-page classes take one :func:`alloc_span`'s run after another.  Returns (start
    pages, ascending, and scavenged pages); fewer than ``count`` spans when the heap runs
    out (or, for multi-page classes, the commit limit says no: a one-page batch takes as
    many unbacked pages as the limit leaves room for).
    """
    if sizeclass == 0:
        raise ValueError("alloc_spans is for small classes, not class 0")
    if count <= 0:
        return np.empty(0, dtype=np.int64), 0
    npages = int(CLASS_NPAGES[sizeclass])
    if npages > 1:
        with heap.lock:
            lo = int(heap.header[H_SEARCH_ADDR])
            take = _carve(heap, lo, count, npages, backed=True)
            if take.size < count:  # then runs with unbacked pages, as the limit allows
                room = min(count - take.size, commit_room(heap) // npages)
                if room > 0:
                    more = _carve(heap, lo, room, npages, backed=False, taken=take)
                    take = np.sort(np.concatenate((take, more)))
            starts = take.astype(np.int64) + lo
            nscav = init_spans(heap, starts, npages, sizeclass)
        return starts, nscav
    with heap.lock:
        lo = int(heap.header[H_SEARCH_ADDR])
        take = _first_free(heap, lo, count, backed=True)
        if take.size < count:  # unbacked pages: as many as the commit limit leaves room for
            room = min(count - take.size, commit_room(heap))
            more = _first_free(heap, lo, room, backed=False) if room > 0 else take[:0]
            take = np.sort(np.concatenate((take, more)))
        starts = take.astype(np.int64) + lo
        nscav = init_spans(heap, starts, 1, sizeclass)
    return starts, nscav


def free_spans(heap: Heap, starts: np.ndarray, compiled: bool | None = None) -> int:
    """Return in-use spans to the page heap (Go's ``mheap.freeSpan``); returns pages freed.
    The plain case (ascending, all in use) runs compiled (kernels.py) when ``compiled``
    (default: ``kernels.enabled()``); anything else, and errors, in numpy.

    Called by the span's sweeper *without* the heap lock: the span is its own until its pages
    read free.  So the stores go in an order that is safe at every instruction: the span is
    first made DEAD (and leaves its set), then its pages are marked free — from that moment an
    allocator may take them, and nothing of ours is written after, except lowering
    ``H_SEARCH_ADDR`` under the lock.  A sweeper killed between the two steps leaves pages
    owned by a DEAD span; :func:`repair` frees them.  Idempotent: DEAD spans are skipped.
    """
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    if compiled is None:
        compiled = kernels.enabled()
    n = _free_compiled(heap, starts) if compiled and starts.size else None
    if n is None:
        got = _free_numpy(heap, starts)
        if got is None:
            return 0
        starts, n = got
    return freed(heap, starts, n)


def freed(heap: Heap, starts: np.ndarray, n: np.ndarray) -> int:
    """What follows the stores that freed the ascending spans ``starts`` of ``n`` pages each
    (int64 arrays): the allocator's search hint lowered and the scavenger's raised, under
    the heap lock, and the eager policy's release hook.  Returns the pages freed."""
    if starts.size == 0:
        return 0
    lo = int(starts[0])
    hi = int(starts[-1] + n[-1])
    with heap.lock:
        if lo < heap.header[H_SEARCH_ADDR]:
            heap.header[H_SEARCH_ADDR] = lo
        if hi > heap.header[H_SCAV_SEARCH]:  # new candidates for the scavenger up here
            heap.header[H_SCAV_SEARCH] = hi
    if heap.on_free is not None:
        failpoint.hit("mheap.freed")
        heap.on_free(starts, n)
    return int(n.sum())


def _free_compiled(heap: Heap, starts: np.ndarray) -> np.ndarray | None:
    """:func:`free_spans`'s plain case (ascending spans, all in use, their pages theirs) in
    two compiled passes, span by span in the same order of stores; returns each span's
    pages, or None (nothing written) for anything else."""
    n = np.empty(starts.size, dtype=np.int64)
    out = np.zeros(2, dtype=np.int64)
    if not kernels.free_spans_plain(kernels.tables(heap), starts, n, out, heap.me):
        return None  # (the freed-pages tally: added by the kernel, span by span)
    pages, held = int(out[0]), int(out[1])
    heap.count(C_IN_USE_PAGES, -pages)
    heap.count(C_SPANS_IN_USE, -int(starts.size))
    heap.count(C_OCCUPIED_PAGES, -held)
    return n


def _free_numpy(heap: Heap, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`free_spans`'s stores for any spans (DEAD ones skipped, any order): the freed
    spans, ascending, and their pages; None if none was in use."""
    live = heap.span_state[starts] == SPAN_IN_USE
    if not live.all():
        starts = starts[live]
    if starts.size == 0:
        return None
    if starts.size > 1 and not (starts[1:] > starts[:-1]).all():
        starts = np.sort(starts)
    ix = span_ix(starts)
    n = heap.span_npages[ix].astype(np.int64)
    if int(n.max()) == 1:
        pages: slice | np.ndarray = ix
        expect: slice | np.ndarray = starts
    else:
        pages = run_pages(starts, n)
        expect = np.repeat(starts, n)
    if (heap.page_span[pages] != expect).any():
        raise HeapCorrupt("freeSpan: a page of the span belongs to another span")
    heap.span_set[ix] = SET_NONE
    heap.span_state[ix] = SPAN_DEAD
    heap.page_span[pages] = PAGE_FREE  # the pages are free from here on
    _count_freed(heap, ix, n)
    return starts, n


def _count_freed(heap: Heap, ix: np.ndarray | slice, npages: np.ndarray) -> None:
    """The running counters' share of freeing spans ``ix`` of ``npages`` pages each."""
    heap.count(C_IN_USE_PAGES, -int(npages.sum()))
    heap.count(C_SPANS_IN_USE, -int(npages.size))
    heap.tally(T_FREED_PAGES, int(npages.sum()))
    held = heap.span_alloc_count[ix] != 0  # a large span's sweep zeroes it first: rare
    if held.any():
        heap.count(C_OCCUPIED_PAGES, -int(npages[held].sum()))


def repair(heap: Heap, owner: int) -> int:
    """Free the pages of spans whose freeing by the dead claimer ``owner`` was cut short
    (span DEAD, pages still mapped to it); returns pages repaired.  Run under the heap lock
    after reaping ``owner``.  Only that claimer's spans: a live sweeper may be between the two
    steps of its own freeSpan right now, and freeing its pages early would let an allocator
    take them before its last store marks them free again."""
    heap.require_lock("mheap.repair")
    owned = np.flatnonzero(heap.page_span >= 0)
    start = heap.page_span[owned]
    cut = (heap.span_state[start] != SPAN_IN_USE) & (heap.span_owner[start] == owner)
    orphan = owned[cut]
    if orphan.size:
        heap.page_span[orphan] = PAGE_FREE
        starts = np.unique(start[cut])  # the dead one did not count them
        _count_freed(heap, starts, heap.span_npages[starts].astype(np.int64))
        lo = int(orphan[0])
        if lo < heap.header[H_SEARCH_ADDR]:
            heap.header[H_SEARCH_ADDR] = lo
        heap.header[H_SCAV_SEARCH] = max(int(heap.header[H_SCAV_SEARCH]), int(orphan[-1]) + 1)
        if heap.on_free is not None:
            heap.on_free(starts, heap.span_npages[starts].astype(np.int64))
    return int(orphan.size)
