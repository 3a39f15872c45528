"""Sweeping spans (Go's mspan.sweep), one at a time and vectorized over batches.

Theory of operation
-------------------
Sweeping a span claimed by this sweeper (sweepgen h-1) does, as Go does:

1. finalizers: an unmarked object with a finalizer is resurrected (its mark bit is set), its
   finalizer bit cleared, and ``(span, index)`` queued to run later;
2. ``nalloc = popcount(mark bits)``; more than ``allocCount`` is corruption ("sweep increased
   allocation count"), and so is a marked object that is not allocated ("found pointer to free
   object");
3. the mark bitmap becomes the alloc bitmap and the old alloc buffer is zeroed to be the next
   mark bitmap; ``allocCount = nalloc``, ``freeindex = 0``;
4. unless ``preserve``: an empty span goes back to the page heap (``mheap.freeSpan``), a full
   one to mcentral's full-swept set, the rest to partial-swept; the span is published swept
   (sweepgen h).

Commit protocol (a sweeper may be killed at any instruction):

* everything up to the commit is a pure read or idempotent (OR-ing resurrected objects into
  the mark bits, clearing finalizer bits, writing ``allocCount``/``freeindex``, recomputable
  from the bitmaps) — except two writes: the finalizer-queue push, which a recovering sweep
  (``recover=True``) makes idempotent by skipping objects already queued, and the debug
  counter ``nsweeps``, which a kill between it and the commit leaves one too high;
* the commit is one store: ``sweptgen = h``, which also flips which buffer is the alloc one;
* everything after is idempotent (zeroing the new mark buffer, set placement, freeSpan,
  publishing sweepgen).

A span found at h-1 with ``sweptgen == h`` was committed by a sweeper that died: the batch
sweep finishes it without sweeping it again.  With ``recover=True`` (sweeping spans whose
claimer died) finalizers already queued are not queued twice.

All checks of a batch run before its first write, so a failed batch changes nothing.

:func:`sweep` is the scalar reference (Go's code, span by span, on Python integers);
:func:`sweep_batch` is the vectorized engine, and the tests hold them equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sweeperd.errors import BadSpanState, FoundPointerToFreeObject, SweepIncreasedAllocCount
from sweeperd.runtime import kernels
from sweeperd.runtime.heap import (
    C_IN_USE_PAGES,
    C_OBJECT_BYTES,
    C_OCCUPIED_PAGES,
    C_SPANS_IN_USE,
    SPAN_IN_USE,
    SWEEP_BATCH,
    T_FINALIZERS_RUN,
    Heap,
    span_ix,
)
from sweeperd.runtime.mheap import free_spans, freed
from sweeperd.runtime.sizeclasses import CLASS_NPAGES, CLASS_NWORDS, CLASS_SIZE
from sweeperd.runtime.spanset import full_swept, partial_swept
from sweeperd.runtime.specials import ENTRY_SHIFT, finq_entries, finq_push
from sweeperd.runtime.sweepgen import M32

_U1 = np.uint64(1)
# Bytes of span-table fields a sweep reads or writes per span (state, class, set, nelems,
# allocCount, freeindex, sweepgen, sweptgen, nsweeps, npages).
SPAN_META_BYTES = 1 + 1 + 1 + 2 + 2 + 2 + 4 + 4 + 4 + 4


@dataclass
class SweepStats:
    spans: int = 0
    pages: int = 0
    objects_freed: int = 0
    spans_freed: int = 0
    pages_freed: int = 0
    finalizers_queued: int = 0
    finalizers_run: int = 0  # run by this sweep to make room in a full queue (backpressure)
    bitmap_bytes: int = 0  # alloc + mark (+ finalizer) bitmap bytes read

    def add(self, o: SweepStats) -> None:
        for k in ("spans", "pages", "objects_freed", "spans_freed", "pages_freed",
                  "finalizers_queued", "finalizers_run", "bitmap_bytes"):
            setattr(self, k, getattr(self, k) + getattr(o, k))


def _bufs(h: int) -> tuple[int, int]:
    """(alloc, mark) buffer of spans awaiting the sweep of generation ``h``."""
    a = ((h - 2) >> 1) & 1
    return a, a ^ 1


# --- the scalar reference ---------------------------------------------------------------------


def _words_to_int(words: np.ndarray) -> int:
    return sum(int(w) << (64 * i) for i, w in enumerate(words))


def _int_to_words(x: int, n: int) -> np.ndarray:
    return np.array([(x >> (64 * i)) & 0xFFFF_FFFF_FFFF_FFFF for i in range(n)], dtype=np.uint64)


def sweep(heap: Heap, s: int, preserve: bool = False) -> bool:
    """Sweep span ``s`` (claimed: sweepgen h-1).  Returns True if it went back to the heap."""
    h = heap.sweepgen
    if heap.span_state[s] != SPAN_IN_USE or int(heap.span_sweepgen[s]) != (h - 1) & M32:
        raise BadSpanState(f"span {s} state {heap.span_state[s]} sweepgen "
                           f"{heap.span_sweepgen[s]}, heap sweepgen {h}")
    if int(heap.span_sweptgen[s]) != (h - 2) & M32:
        raise BadSpanState(f"span {s} sweptgen {heap.span_sweptgen[s]} is not h-2 ({h - 2})")
    nw = int(CLASS_NWORDS[heap.span_class[s]])
    nelems = int(heap.span_nelems[s])
    a, m = _bufs(h)
    alloc = _words_to_int(heap.bits[a, :nw, s])
    mark = _words_to_int(heap.bits[m, :nw, s])
    fin = _words_to_int(heap.fin_bits[:nw, s])

    queued = []
    for i in range(nelems):
        if (fin >> i) & 1 and not (mark >> i) & 1:
            mark |= 1 << i  # resurrect: keep the object for its finalizer
            fin &= ~(1 << i)
            queued.append(i)
    nalloc = mark.bit_count()
    if nalloc > int(heap.span_alloc_count[s]):
        raise SweepIncreasedAllocCount(
            f"span {s}: nalloc {nalloc} > allocCount {heap.span_alloc_count[s]}")
    bad = mark & ~alloc
    if bad:
        i = (bad & -bad).bit_length() - 1
        raise FoundPointerToFreeObject(f"span {s} object {i} is marked but not allocated")

    with heap.lock:
        finq_push(heap, np.full(len(queued), s), np.array(queued, dtype=np.int64))
    heap.bits[m, :nw, s] = _int_to_words(mark, nw)
    heap.fin_bits[:nw, s] = _int_to_words(fin, nw)
    heap.span_specials[s] = 1 if fin else 0
    old = int(heap.span_alloc_count[s])
    heap.count(C_OBJECT_BYTES, (nalloc - old) * int(heap.elem_sizes(np.array([s]))[0]))
    if old and not nalloc:
        heap.count(C_OCCUPIED_PAGES, -int(heap.span_npages[s]))
    heap.span_alloc_count[s] = nalloc
    heap.span_freeindex[s] = 0
    heap.commit_sweep(s, h)  # commit: the mark buffer is now the alloc buffer
    heap.bits[a, :nw, s] = 0  # the old alloc buffer is the fresh mark bitmap
    heap.span_sweepgen[s] = h
    if preserve:
        return False
    if nalloc == 0:
        free_spans(heap, np.array([s]))
        return True
    if nalloc == nelems:
        heap.span_set[s] = full_swept(h)
    else:
        heap.span_set[s] = partial_swept(h)
    return False


# --- the vectorized engine --------------------------------------------------------------------


def _distinct(small: np.ndarray) -> list[int]:
    """Distinct values of an array of small non-negative ints (bitmap word counts)."""
    return np.flatnonzero(np.bincount(small, minlength=1)).tolist() if small.size else []


def _unpack_positions(r: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(span, index) of every set bit of the (nw, n) bitmap slab ``r``."""
    b = np.unpackbits(np.ascontiguousarray(r.T).view(np.uint8), axis=1, bitorder="little")
    col, idx = np.nonzero(b)
    return cols[col], idx.astype(np.int64)


def sweep_batch(heap: Heap, spans: np.ndarray, preserve: bool = False,
                recover: bool = False,
                fault: Callable[[str], None] | None = None, count: bool = True,
                compiled: bool | None = None) -> SweepStats:
    """Sweep many claimed spans at once; the same result as :func:`sweep` on each in turn.

    The plain case (ascending spans claimed at h-1, none committed, none with finalizers,
    no invariant broken) runs in kernels.py's compiled loops when ``compiled`` (default:
    whether they loaded, ``kernels.enabled()``) and neither ``fault`` nor ``recover`` is given;
    anything else, and every error, in the numpy engine below: the kernels' reference.

    With ``count``, the spans, pages and objects whose sweep this call commits are tallied
    in this process's row of the heap's tallies as one in-flight batch (heap.py's
    ``SWEEP_BATCH``: written and flagged before the first write, applied after the commit),
    so a death anywhere leaves them counted exactly once (recovery.claims).  Spans already
    committed (by a dead sweeper) are finished but not counted, here or in the returned
    :class:`SweepStats`.

    ``fault`` is a test seam called at the phase boundaries ("checked", "committed",
    "published", and "freeing" inside the heap lock), where a test kills the process to prove
    each point recoverable.
    """
    spans = np.asarray(spans, dtype=np.int64)
    st = SweepStats()
    if spans.size == 0:
        return st
    if (kernels.enabled() if compiled is None else compiled) and fault is None and not recover:
        swept = _sweep_compiled(heap, spans, preserve, count)
        if swept is not None:
            return swept
    if spans.size > 1 and not (spans[1:] > spans[:-1]).all():
        spans = np.sort(spans)  # ascending: contiguous runs take the slicing fast path
        if (spans[1:] == spans[:-1]).any():
            raise BadSpanState("sweep_batch: a span appears twice in one batch")
    ix = span_ix(spans)
    h = heap.sweepgen
    bad = (heap.span_state[ix] != SPAN_IN_USE) | (heap.span_sweepgen[ix] != (h - 1) & M32)
    if bad.any():
        s = int(spans[np.argmax(bad)])
        raise BadSpanState(f"span {s} state {heap.span_state[s]} sweepgen "
                           f"{heap.span_sweepgen[s]}, heap sweepgen {h}")
    sweptgen = heap.span_sweptgen[ix]
    committed = sweptgen == h
    any_committed = bool(committed.any())
    wrong = sweptgen != (h - 2) & M32
    if any_committed:
        wrong &= ~committed
    if wrong.any():
        s = int(spans[np.argmax(wrong)])
        raise BadSpanState(f"span {s} sweptgen {heap.span_sweptgen[s]} is neither h-2 nor h")

    a, m = _bufs(h)
    nws = CLASS_NWORDS[heap.span_class[ix]]
    kinds = _distinct(nws)
    queued_before = finq_entries(heap) if recover else None
    todo, todo_nw = (spans[~committed], nws[~committed]) if any_committed else (spans, nws)

    # Phase 1: reads and checks only.
    pending = []
    for k in _distinct(todo_nw):
        cols = todo if len(kinds) == 1 and not any_committed else todo[todo_nw == k]
        cix = span_ix(cols)
        A = heap.bits[a, :k][:, cix]
        M = heap.bits[m, :k][:, cix]
        fin = None
        # Only spans flagged as having specials have their finalizer bitmap read at all: a
        # read of an untouched tmpfs page would allocate it.
        fcols = np.flatnonzero(heap.span_specials[cix])
        if fcols.size:
            Ff = heap.fin_bits[:k][:, cols[fcols]]
            Mf = M[:, fcols]
            done = _queued_bits(queued_before, cols[fcols], k) if recover else np.uint64(0)
            unmarked = Ff & ~Mf
            M = M.copy()
            M[:, fcols] = Mf | Ff  # resurrect every unmarked object with a finalizer
            clear = unmarked | (Ff & done)  # finalizer bits that go: queued now or before
            fin = (fcols, M[:, fcols], clear, _unpack_positions(unmarked & ~done, cols[fcols]))
        nalloc = np.bitwise_count(M).sum(axis=0, dtype=np.int64)
        over = nalloc > heap.span_alloc_count[cix]
        if over.any():
            i = int(np.argmax(over))
            raise SweepIncreasedAllocCount(
                f"nalloc {nalloc[i]} > allocCount; {_describe(heap, int(cols[i]))}")
        stray = M & ~A
        if stray.any():
            i = int(np.argmax(stray.any(axis=0)))
            raise FoundPointerToFreeObject(f"a marked object is not allocated; "
                                           f"{_describe(heap, int(cols[i]))}")
        nbefore = np.bitwise_count(A).sum(dtype=np.int64)
        pending.append((k, cols, cix, fin, nalloc, int(nbefore)))

    todo_pages = int(heap.span_npages[span_ix(todo)].sum(dtype=np.int64))
    if count and pending:
        nfreed = sum(nb - int(na.sum()) for _, _, _, _, na, nb in pending)
        heap.begin_batch(SWEEP_BATCH, (int(todo.size), todo_pages, nfreed))
    if fault:
        fault("checked")
    # Phase 2: writes up to and including the commit.
    for k, cols, cix, fin, nalloc, nbefore in pending:
        if fin is not None:
            fcols, mnew, clear, (qs, qi) = fin
            with heap.lock:
                ran = finq_push(heap, qs, qi)
            st.finalizers_run += ran
            if count:
                heap.tally(T_FINALIZERS_RUN, ran)
            st.finalizers_queued += qs.size
            mv = heap.bits[m, :k]
            mv[:, cols[fcols]] = mnew
            fv = heap.fin_bits[:k]
            fv[:, cols[fcols]] &= ~clear
            heap.span_specials[cols[fcols]] = fv[:, cols[fcols]].any(axis=0)
        _count_swept(heap, cix, nalloc)
        heap.span_alloc_count[cix] = nalloc
        heap.span_freeindex[cix] = 0
        if fault:
            fault("committing")
        heap.commit_sweep(cix, h)  # commit (and count the sweep, in the same store)
        st.objects_freed += nbefore - int(nalloc.sum())
        st.bitmap_bytes += cols.size * k * 8 * 2

    if count:
        heap.apply_batch(SWEEP_BATCH)
    if fault:
        fault("committed")
    # Phase 3: idempotent finishing, for the spans committed now and by a dead sweeper.
    for k in kinds:
        cix = ix if len(kinds) == 1 else span_ix(spans[nws == k])
        av = heap.bits[a, :k]
        av[:, cix] = 0  # the old alloc buffer becomes the fresh mark bitmap
    heap.span_sweepgen[ix] = h  # publish
    if fault:
        fault("published")
    st.spans = int(todo.size)
    st.pages = todo_pages
    if preserve:
        return st
    na = heap.span_alloc_count[ix]
    empty = na == 0
    if empty.all():
        freed = spans
    else:
        full = ~empty & (na == heap.span_nelems[ix])
        heap.span_set[spans[full]] = full_swept(h)
        heap.span_set[spans[~empty & ~full]] = partial_swept(h)
        freed = spans[empty]
    if freed.size:
        if fault:
            with heap.lock:
                fault("freeing")  # a death holding the heap lock must not wedge it
        st.pages_freed = free_spans(heap, freed)
        st.spans_freed = int(freed.size)
    return st


def _sweep_compiled(heap: Heap, spans: np.ndarray, preserve: bool,
                    count: bool) -> SweepStats | None:
    """:func:`sweep_batch`'s plain case in two compiled passes (kernels.py), with the same
    tallies, running counters and commit protocol; None (nothing written) if the batch is
    not the plain case."""
    if not kernels.enabled():
        raise RuntimeError(f"sweep_batch(compiled=True): no kernels: {kernels.unavailable()}")
    h = heap.sweepgen
    n = int(spans.size)
    spans = np.ascontiguousarray(spans)
    t = kernels.tables(heap)
    nalloc = np.empty(n, dtype=np.int64)
    out = np.zeros(7, dtype=np.int64)
    if not kernels.sweep_check(t, spans, h, nalloc, out):
        return None
    nbefore, pages, nleft, dbytes, docc, nempty, epages = out.tolist()
    nfreed = nbefore - nleft
    if count:
        heap.begin_batch(SWEEP_BATCH, (n, pages, nfreed))
    # the running counters lead the stores, as numpy's engine counts the sweep before its
    # writes; and the freed spans too, so no reader sees a freed page still counted in use
    # (an allocator may take it at once).  A death between leaves them off either way: the
    # coordinator rebases them (heapstats.rebase).  The freed-pages tally, which is never
    # rebased, the kernel adds span by span as the pages go free.
    heap.count(C_OBJECT_BYTES, dbytes)
    heap.count(C_OCCUPIED_PAGES, docc)
    if not preserve and nempty:
        heap.count(C_IN_USE_PAGES, -epages)
        heap.count(C_SPANS_IN_USE, -nempty)
    empties = np.empty(n, dtype=np.int64)
    npg = np.empty(n, dtype=np.int64)
    ne = kernels.sweep_commit(t, spans, h, nalloc, preserve, empties, npg, out, heap.me)
    if count:
        heap.apply_batch(SWEEP_BATCH)
    st = SweepStats(spans=n, pages=pages, objects_freed=nfreed, bitmap_bytes=int(out[0]) * 16)
    if ne:  # freed in place: what follows mheap.free_spans's stores
        assert ne == nempty, (ne, nempty)
        st.pages_freed = freed(heap, empties[:ne], npg[:ne])
        st.spans_freed = ne
    return st


def _count_swept(heap: Heap, cix: slice | np.ndarray, nalloc: np.ndarray) -> None:
    """The running counters' share of setting spans ``cix``'s allocCounts to ``nalloc``: the
    objects freed and the pages of spans emptied.  A batch of one small class, the usual
    case, costs a few sums; a mix, a gather of sizes."""
    cls = heap.span_class[cix]
    c = int(cls[0])
    old = heap.span_alloc_count[cix]
    if c != 0 and not (cls != c).any():
        heap.count(C_OBJECT_BYTES,
                   (int(nalloc.sum()) - int(old.sum(dtype=np.int64))) * int(CLASS_SIZE[c]))
        # a sweep only lowers counts, so a span it leaves holding objects held some before
        heap.count(C_OCCUPIED_PAGES, (int(np.count_nonzero(nalloc)) - int(np.count_nonzero(old)))
                   * int(CLASS_NPAGES[c]))
        return
    heap.count(C_OBJECT_BYTES, int(((nalloc - old.astype(np.int64)) * heap.elem_sizes(cix)).sum()))
    emptied = (nalloc == 0) & (old != 0)
    heap.count(C_OCCUPIED_PAGES, -int(heap.span_npages[cix][emptied].sum(dtype=np.int64)))


def _describe(heap: Heap, s: int) -> str:
    """Everything about span ``s`` that helps a post-mortem."""
    nw = int(CLASS_NWORDS[heap.span_class[s]])
    a = int(heap.alloc_buf(s))
    return (f"span {s}: class {heap.span_class[s]} npages {heap.span_npages[s]} state "
            f"{heap.span_state[s]} set {heap.span_set[s]} allocCount "
            f"{heap.span_alloc_count[s]} freeindex {heap.span_freeindex[s]} sweepgen "
            f"{heap.span_sweepgen[s]} sweptgen {heap.span_sweptgen[s]} heap sweepgen "
            f"{heap.sweepgen} owner {heap.span_owner[s]} nsweeps {heap.span_nsweeps[s]} "
            f"alloc {[hex(int(w)) for w in heap.bits[a, :nw, s]]} "
            f"mark {[hex(int(w)) for w in heap.bits[a ^ 1, :nw, s]]} "
            f"specials {heap.span_specials[s]}")


def _queued_bits(entries: np.ndarray | None, cols: np.ndarray, nw: int) -> np.ndarray:
    """(nw, len(cols)) bitmap of the objects of spans ``cols`` present in queue ``entries``."""
    out = np.zeros((nw, cols.size), dtype=np.uint64)
    if entries is None or entries.size == 0:
        return out
    es, ei = entries >> ENTRY_SHIFT, entries & ((1 << ENTRY_SHIFT) - 1)
    pos = np.searchsorted(cols, es)
    pos = np.minimum(pos, cols.size - 1)
    hit = cols[pos] == es
    np.bitwise_or.at(out, (ei[hit] >> 6, pos[hit]), _U1 << (ei[hit] & 63).astype(np.uint64))
    return out
