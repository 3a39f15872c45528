"""Allocating objects in a span (Go's nextFreeIndex / mallocgc) and writing their payloads.

Theory of operation
-------------------
A swept span's alloc bitmap marks the slots in use.  Allocation takes the next free slot at or
after ``freeindex`` and sets its bit; ``freeindex`` moves past it (every slot below it is in use
or was skipped as used).  :func:`alloc_objects` takes ``k`` slots at once with one unpack of the
span's bitmap, for mutators that want speed.  Unlike Go, which records slots below
``freeindex`` implicitly, the alloc bit is written at once, so ``allocCount ==
popcount(allocBits)`` holds at every moment.

Payloads are really written into the arena, every 8-byte word of an object: its first word
gets :func:`payload_words` of its address and the allocation's seed (an object found
elsewhere than where it was written reads wrong), every other word the seed's
:func:`fill_word`, one byte repeated (bytes another allocation wrote over it read wrong,
unless the two seeds' bytes agree: 1 in 255; the first word, unique to the object and the
seed, still tells any reuse of its slot) — written as a memset (one byte: 2.5x a word fill
here) and one store per object, about what Go's allocator costs when it zeroes a reused
object.
So pages are really touched (RSS is real) and a live object's bytes can be checked later
with :func:`verify_payload`.

Invariants: only a swept span (sweepgen h or h+3) is allocated from; never past ``nelems``.
"""

from __future__ import annotations

import numpy as np

from sweeperd.errors import AllocCountOverflow, BadSpanState
from sweeperd.runtime.heap import (
    C_OBJECT_BYTES,
    C_OCCUPIED_PAGES,
    F_ALLOC,
    P_BASE_BYTES,
    P_BASE_OBJECTS,
    P_BYTES_ALLOCATED,
    P_OBJECTS_ALLOCATED,
    SPAN_IN_USE,
    T_BYTES_ALLOCATED,
    T_OBJECTS_ALLOCATED,
    Heap,
)
from sweeperd.runtime.runs import consecutive
from sweeperd.runtime.sizeclasses import CLASS_NELEMS, CLASS_NWORDS, CLASS_SIZE, PAGE_SIZE
from sweeperd.runtime.sweepgen import SweepState, state_of
from sweeperd.sys import failpoint

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_MIX = 0xBF58476D1CE4E5B9  # splitmix64's multiplier: a seed's fill word


def elem_size(heap: Heap, span: int) -> int:
    c = int(heap.span_class[span])
    return int(heap.span_npages[span]) * PAGE_SIZE if c == 0 else int(CLASS_SIZE[c])


def alloc_objects(heap: Heap, span: int, k: int) -> np.ndarray:
    """Allocate up to ``k`` objects in ``span``; returns their slot indices (fewer if full)."""
    if heap.span_state[span] != SPAN_IN_USE:
        raise BadSpanState(f"allocating from span {span} which is not in use")
    st = state_of(int(heap.span_sweepgen[span]), heap.sweepgen)
    if st not in (SweepState.SWEPT, SweepState.CACHED_SWEPT):
        raise BadSpanState(f"allocating from span {span} in state {st.name}: sweep it first")
    nelems = int(heap.span_nelems[span])
    fi = int(heap.span_freeindex[span])
    if k <= 0 or fi >= nelems:
        return np.empty(0, dtype=np.int64)
    nw = int(CLASS_NWORDS[heap.span_class[span]])
    a = int(heap.alloc_buf(span))
    words = heap.bits[a, :nw, span].copy()
    b = np.unpackbits(words.view(np.uint8), bitorder="little")
    got = np.flatnonzero(b[fi:nelems] == 0)[:k] + fi
    if got.size == 0:
        heap.span_freeindex[span] = nelems
        return got.astype(np.int64)
    b[got] = 1
    count = int(heap.span_alloc_count[span]) + got.size
    if count > nelems:
        raise AllocCountOverflow(f"span {span}: allocCount {count}, nelems {nelems}")
    esize = elem_size(heap, span)
    _begin(heap, int(got.size), int(got.size) * esize)
    heap.bits[a, :nw, span] = np.packbits(b, bitorder="little").view(np.uint64)
    failpoint.hit("malloc.bits_set")  # recovery recounts allocCount from the bits
    was_empty = heap.span_alloc_count[span] == 0
    _tallied(heap)
    heap.span_alloc_count[span] = count
    heap.tallies[heap.me, F_ALLOC] = 0
    if was_empty:  # first, so a reader never sees more objects than occupied pages hold
        heap.count(C_OCCUPIED_PAGES, int(heap.span_npages[span]))
    heap.count(C_OBJECT_BYTES, got.size * esize)
    heap.span_freeindex[span] = int(got[-1]) + 1
    return got.astype(np.int64)


def payload_words(word_index: np.ndarray, seed: int) -> np.ndarray:
    """The payload of the first word of an object at arena word ``word_index``, written
    with ``seed``: its address times the golden ratio, xor the seed (a misplaced object
    reads wrong here)."""
    w = word_index.astype(np.uint64, copy=False) * _GOLD
    w ^= np.uint64(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return w


def fill_byte(seed: int) -> int:
    """The byte every word of an object but its first is filled with, for ``seed``: the
    top byte of the seed's hash, never 0 (a page the allocation never wrote reads 0)."""
    return (((seed & 0xFFFF_FFFF_FFFF_FFFF) * _MIX) & 0xFFFF_FFFF_FFFF_FFFF) >> 56 | 1


def fill_word(seed: int) -> np.uint64:
    """The payload of every word of an object but its first, written with ``seed``:
    :func:`fill_byte` in each of its 8 bytes (an object overwritten by another's bytes
    reads wrong here, unless their bytes agree)."""
    return np.uint64(fill_byte(seed) * 0x0101_0101_0101_0101)


def _object_words(heap: Heap, span: int | np.ndarray,
                  idx: np.ndarray) -> tuple[np.ndarray, int]:
    """First arena word of each object, and words per object.  ``span`` is one span or one
    per object; all the objects must have the same size (one class)."""
    spans = np.asarray(span, dtype=np.int64)
    first = int(spans.flat[0]) if spans.size else 0
    size = elem_size(heap, first) if spans.size else 8
    if spans.ndim and spans.size > 1:
        cls = heap.span_class[spans]
        if (cls != cls[0]).any() or (cls[0] == 0 and (heap.span_npages[spans] !=
                                                        heap.span_npages[first]).any()):
            raise ValueError("objects of one payload call must all have the same size")
    base = (spans * PAGE_SIZE + np.asarray(idx, dtype=np.int64) * size) >> 3
    return base, size >> 3


def write_payload(heap: Heap, span: int | np.ndarray, idx: np.ndarray, seed: int) -> None:
    """Write the payload of objects ``idx`` of ``span`` (one span, or one per object): every
    word the seed's fill word, then each first word its address's payload."""
    base, nw = _object_words(heap, span, idx)
    base = np.atleast_1d(base)
    if base.size == 0:
        return
    fill = fill_word(seed)
    byte = fill_byte(seed)
    if nw > 512:  # large objects: one slice each, a memset
        for b in base.tolist():
            heap.arena_region.map_in(b << 3, nw << 3)  # one call, not a fault a page
            heap.arena[b << 3 : (b + nw) << 3].fill(byte)
    else:
        lo, hi = int(base[0]), int(base[-1]) + nw
        if hi - lo == base.size * nw and (base.size == 1 or (np.diff(base) == nw).all()):
            heap.arena[lo << 3 : hi << 3].fill(byte)  # back to back: one memset
        else:
            heap.arena64[(base[:, None] + np.arange(nw)).ravel()] = fill
    heap.arena64[base] = payload_words(base, seed)


def write_span_payloads(heap: Heap, spans: np.ndarray, seed: int, npages: int = 1) -> None:
    """Write the payload of every object of filled ``spans`` (ascending) of ``npages`` pages
    each, and their tails beyond the last object (never allocated, written with the page):
    the fill word over each run of consecutive pages (a memset), then each object's first
    word.  The fast path of a mutator that fills whole spans."""
    words = PAGE_SIZE >> 3
    spans = np.asarray(spans, dtype=np.int64)
    if spans.size == 0:
        return
    pages = spans if npages == 1 else (spans[:, None] + np.arange(npages)).ravel()
    byte = fill_byte(seed)
    for first, count in zip(*consecutive(pages), strict=True):
        heap.arena_region.map_in(first * PAGE_SIZE, count * PAGE_SIZE)  # one call, not faults
        heap.arena[first * PAGE_SIZE : (first + count) * PAGE_SIZE].fill(byte)  # a memset
    c = int(heap.span_class[spans[0]])
    ow = int(CLASS_SIZE[c]) >> 3
    firsts = (spans[:, None] * words + np.arange(int(CLASS_NELEMS[c])) * ow).ravel()
    heap.arena64[firsts] = payload_words(firsts, seed)


def verify_span_payloads(heap: Heap, spans: np.ndarray, nelems: int, obj_words: int,
                         seed: int) -> np.ndarray:
    """Boolean per object, shape (spans, nelems): do the ``nelems`` objects of
    ``obj_words`` words of each span read as :func:`write_span_payloads` wrote them?"""
    spans = np.asarray(spans, dtype=np.int64)
    w = (spans[:, None] * (PAGE_SIZE >> 3) + np.arange(nelems * obj_words)).reshape(
        spans.size, nelems, obj_words)
    got = heap.arena64[w]
    ok = (got[:, :, 1:] == fill_word(seed)).all(axis=2)
    return ok & (got[:, :, 0] == payload_words(w[:, :, 0], seed))


def verify_payload(heap: Heap, span: int | np.ndarray, idx: np.ndarray,
                   seed: int) -> np.ndarray:
    """Boolean per object: does its payload still read as written with ``seed``?"""
    base, nw = _object_words(heap, span, idx)
    base = np.atleast_1d(base)
    if base.size == 0:
        return np.ones(0, dtype=bool)
    got = heap.arena64[base[:, None] + np.arange(nw)]
    return (got[:, 1:] == fill_word(seed)).all(axis=1) & (got[:, 0] == payload_words(base,
                                                                                      seed))


def alloc_all(heap: Heap, spans: np.ndarray) -> int:
    """Allocate every slot of fresh (empty, swept) spans at once; returns objects allocated.

    The bulk path of a mutator that fills whole spans: alloc bits set for ``[0, nelems)``,
    ``allocCount = nelems``, ``freeindex = nelems``.
    """
    spans = np.asarray(spans, dtype=np.int64)
    if spans.size == 0:
        return 0
    if (heap.span_alloc_count[spans] != 0).any():
        raise BadSpanState("alloc_all: a span is not empty")
    total = 0
    cls = heap.span_class[spans]
    for c in np.unique(cls):
        cols = spans[cls == c]
        ne = int(heap.span_nelems[cols[0]])
        nw = int(CLASS_NWORDS[c])
        full = np.zeros(nw * 64, dtype=np.uint8)
        full[:ne] = 1
        words = np.packbits(full, bitorder="little").view(np.uint64)
        n = ne * int(cols.size)
        _begin(heap, n, n * int(CLASS_SIZE[c]) if c else
               int(heap.span_npages[cols].sum()) * PAGE_SIZE)
        for buf, cb in heap.by_alloc_buf(cols):
            v = heap.bits[buf, :nw]
            v[:, cb] = words[:, None]
        failpoint.hit("malloc.bits_set")
        _tallied(heap)
        heap.span_alloc_count[cols] = ne
        heap.tallies[heap.me, F_ALLOC] = 0
        heap.count(C_OCCUPIED_PAGES, int(heap.span_npages[cols].sum(dtype=np.int64)))  # were 0
        heap.count(C_OBJECT_BYTES, ne * cols.size * int(CLASS_SIZE[c]))
        heap.span_freeindex[cols] = ne
        total += ne * cols.size
    return total


def _begin(heap: Heap, objects: int, nbytes: int) -> None:
    """An allocation's tally, before its alloc bits are set: this process's totals before
    and after it, and flag 1.  With the flag at 1 its allocCounts are not written yet, so
    recovery's recount of the bits (bits minus allocCount) is exactly what it allocated,
    added to the totals before it; at 2 (:func:`_tallied`) its totals stand.  Every store
    recovery makes is absolute: a death between any two of these stores counts it once."""
    row = heap.tallies[heap.me]
    row[P_BASE_OBJECTS] = row[T_OBJECTS_ALLOCATED]
    row[P_BASE_BYTES] = row[T_BYTES_ALLOCATED]
    row[P_OBJECTS_ALLOCATED] = row[T_OBJECTS_ALLOCATED] + objects
    row[P_BYTES_ALLOCATED] = row[T_BYTES_ALLOCATED] + nbytes
    row[F_ALLOC] = 1


def _tallied(heap: Heap) -> None:
    """The alloc bits are set: the totals after the allocation stand (flag 2), before its
    allocCounts are written; the caller lowers the flag after them."""
    row = heap.tallies[heap.me]
    row[T_OBJECTS_ALLOCATED] = row[P_OBJECTS_ALLOCATED]
    row[T_BYTES_ALLOCATED] = row[P_BYTES_ALLOCATED]
    row[F_ALLOC] = 2


def recover_tally(heap: Heap, owner: int, recount: tuple[int, int]) -> None:
    """Set the dead allocator ``owner``'s allocation totals from its flag and the recount of
    its cached spans' bits (objects, bytes: what the bits hold beyond their allocCounts)."""
    row = heap.tallies[owner]
    if row[F_ALLOC] == 2:
        row[T_OBJECTS_ALLOCATED] = row[P_OBJECTS_ALLOCATED]
        row[T_BYTES_ALLOCATED] = row[P_BYTES_ALLOCATED]
    elif row[F_ALLOC] == 1:
        row[T_OBJECTS_ALLOCATED] = row[P_BASE_OBJECTS] + recount[0]
        row[T_BYTES_ALLOCATED] = row[P_BASE_BYTES] + recount[1]
    else:  # nothing in flight: the bits and the counts agree (0, 0)
        row[T_OBJECTS_ALLOCATED] += recount[0]
        row[T_BYTES_ALLOCATED] += recount[1]
    row[F_ALLOC] = 0


def repair_alloc_counts(heap: Heap, spans: np.ndarray, repaired: list[int] | None = None) -> int:
    """Recompute ``allocCount`` (and a safe ``freeindex``) of swept spans from their alloc
    bitmaps; returns how many were wrong.  Allocation writes the bits first and the count
    after, so a mutator killed in between leaves the count short; the bits are the truth.
    ``repaired``, if given, gets [objects, bytes] the recount added."""
    spans = np.asarray(spans, dtype=np.int64)
    wrong = 0
    added = [0, 0]
    for s in spans.tolist():
        nw = int(CLASS_NWORDS[heap.span_class[s]])
        n = int(np.bitwise_count(heap.bits[int(heap.alloc_buf(s)), :nw, s]).sum())
        old = int(heap.span_alloc_count[s])
        if n != old:
            wrong += 1
            heap.count(C_OBJECT_BYTES, (n - old) * elem_size(heap, s))
            added[0] += n - old
            added[1] += (n - old) * elem_size(heap, s)
            heap.count(C_OCCUPIED_PAGES, ((n > 0) - (old > 0)) * int(heap.span_npages[s]))
            heap.span_alloc_count[s] = n
            heap.span_freeindex[s] = 0  # rescan from the start: the bits decide
    if repaired is not None:
        repaired[:] = added
    return wrong
