"""Compiled loops for the hot paths numpy can only do in many passes (C, built at first use).

Theory of operation
-------------------
The vectorized engines (sweep.py's :func:`~sweeperd.runtime.sweep.sweep_batch`,
mheap.py's :func:`~sweeperd.runtime.mheap.free_spans`) are correct and tested against Go's
span-by-span reference, but each step of a batch is a separate numpy pass: popcounts,
comparisons, gathers, the commit word's arithmetic, each with its temporaries — some forty
passes over metadata a compiled loop reads once.  The loops in ``kernels.c`` do the *common*
case in one pass each and leave everything else to the numpy engines, which stay the
reference they are tested against:

* :func:`sweep_check` reads a claimed batch once (state, sweepgen, sweptgen, specials,
  bitmaps) and returns ``False``, having written nothing but its own outputs, as soon as a
  span is anything but the plain case: not ascending, not claimed at h-1, committed by a dead
  sweeper, carrying finalizers, or breaking an invariant.  The caller then hands the whole
  batch to the numpy engine, which handles the general case and raises the named Throw in
  Go's wording, so an error reads the same whichever engine met it first.
* :func:`sweep_commit` writes a checked batch span by span in the commit protocol's order
  (sweep.py's theory): ``allocCount``/``freeindex``, the single commit store, the old alloc
  buffer zeroed, ``sweepgen = h`` published, then the set or, for a span left empty,
  freeSpan's stores in mheap.py's order (out of its set, DEAD, its pages free); release
  fences between the steps.  A death at any instruction leaves each span unswept,
  committed-but-unpublished, published-but-not-freed, DEAD with its pages (``mheap.repair``)
  or done: the states recovery already finishes.
* :func:`free_spans_plain` is freeSpan for ascending in-use spans: all pages checked first,
  then per span: out of its set, DEAD, pages free (mheap.py's order).
* :func:`carve` is mheap's search for the first free runs from the search hint (pure
  reads, under the caller's heap lock): one scan that stops when it has found enough,
  where numpy scans windows of the page map in several passes each, with the lock held.

Invariants: a kernel writes only the spans it is given, only after its checks passed, and
never takes the heap lock (the spans are claimed: their caller's own).  Every array is
checked here for dtype, C-contiguity and length before its address goes to C, which checks
nothing: a heap's tables once (:class:`Tables`, whose addresses are kept while the heap is),
a call's own arrays at each call; spans outside the heap are refused in C.

Availability: :func:`enabled` is true when ``kernels.c`` built and loaded (sys/cbuild.py:
the system's cc, once per machine, in a cache only this user may write; on the first call,
not at import) and ``SWEEPERD_KERNELS`` is not ``0``/``false``/``off``/``no``;
:func:`unavailable` says why not.  Without it every caller takes the numpy
engines, which the tests run both ways.
"""

from __future__ import annotations

import ctypes
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sweeperd.runtime.heap import NTALLIES, PAGE_FREE, SPAN_DEAD, SPAN_IN_USE, T_FREED_PAGES
from sweeperd.runtime.sizeclasses import CLASS_NWORDS, CLASS_SIZE, NUM_CLASSES, PAGE_SIZE
from sweeperd.runtime.spanset import SET_NONE, full_swept, partial_swept
from sweeperd.sys import cbuild

_P = ctypes.c_void_p
_I = ctypes.c_int64


OFF = {"0", "false", "off", "no"}


def _load() -> tuple[ctypes.CDLL | None, str]:
    choice = os.environ.get("SWEEPERD_KERNELS", "").strip().lower()
    if choice in OFF:
        return None, f"SWEEPERD_KERNELS={os.environ['SWEEPERD_KERNELS']}"
    src = Path(str(resources.files("sweeperd.runtime").joinpath("kernels.c")))
    path = cbuild.shared_library(src, "kernels")
    if path is None:
        return None, cbuild.last_error
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return None, f"cannot load {path}: {e}"
    lib.sweep_check.argtypes = [_P, _I, _I, _I, _I, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P,
                                _P, _I, _P, _P, _P, _P]
    lib.sweep_check.restype = ctypes.c_int
    lib.sweep_commit.argtypes = [_P, _I, _I, _I, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P,
                                 _P, _I, _I, _I, _P, _P, _P, _I, _I, _I, _P, _P, _P, _P]
    lib.sweep_commit.restype = _I
    lib.free_spans_plain.argtypes = [_P, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P,
                                     _P]
    lib.free_spans_plain.restype = ctypes.c_int
    lib.carve.argtypes = [_P, _P, _I, _I, _I, _I, _I, _I, _P, _I, _P]
    lib.carve.restype = _I
    return lib, ""


_lib: ctypes.CDLL | None = None
_why = ""
_loaded = False


def enabled() -> bool:
    """Are the compiled kernels here?  Built and loaded on the first call (so a process that
    never sweeps, like ``sweeperd status``, never runs a compiler)."""
    global _lib, _why, _loaded
    if not _loaded:
        _lib, _why = _load()
        _loaded = True
    return _lib is not None


def unavailable() -> str:
    """Why the compiled kernels are not here ("" when they are)."""
    enabled()
    return _why


def engine() -> str:
    """The sweep engine this process runs, as a user reads it."""
    return "compiled" if enabled() else f"numpy (no compiled kernels: {unavailable()})"


def _ptr(a: np.ndarray, dtype: type, n: int | None = None) -> int:
    """``a``'s address, once it is certain to be what the C side indexes: ``dtype``,
    C-contiguous, and at least ``n`` long if given."""
    if a.dtype != np.dtype(dtype) or not a.flags.c_contiguous:
        raise TypeError(f"kernels: an array of {a.dtype} (contiguous "
                        f"{a.flags.c_contiguous}) where C reads {np.dtype(dtype)}")
    if n is not None and a.size < n:
        raise ValueError(f"kernels: an array of {a.size} where {n} are indexed")
    return int(a.ctypes.data)


class Tables:
    """A heap's span table, page map and bitmaps as the addresses C indexes, each array's
    dtype, contiguity and length checked once (they are views of the heap's mapping, which
    never moves while the heap is open).  Build with :func:`tables`."""

    def __init__(self, heap: Any) -> None:
        npg = int(heap.span_state.size)
        bits = heap.bits
        if bits.ndim != 3 or bits.shape[0] != 2 or bits.shape[2] != npg:
            raise ValueError(f"kernels: bits of shape {bits.shape} for {npg} pages")
        if int(CLASS_NWORDS.max()) > bits.shape[1]:
            raise ValueError("kernels: a class's bitmap is wider than the heap's")
        self.npages = npg
        self.maxw = int(bits.shape[1])
        self.bits = _ptr(bits, np.uint64)

        def table(name: str, dtype: type) -> int:
            arr = getattr(heap, name)
            if arr.size != npg:
                raise ValueError(f"kernels: {name} has {arr.size} entries for {npg} pages")
            return _ptr(arr, dtype)

        self.state = table("span_state", np.uint8)
        self.sweepgen = table("span_sweepgen", np.uint32)
        self.commit = table("span_commit", np.uint64)
        self.specials = table("span_specials", np.uint8)
        self.cls = table("span_class", np.uint8)
        self.npages_of = table("span_npages", np.int32)
        self.nelems = table("span_nelems", np.uint16)
        self.alloc_count = table("span_alloc_count", np.uint16)
        self.freeindex = table("span_freeindex", np.uint16)
        self.span_set = table("span_set", np.uint8)
        self.page_span = table("page_span", np.int32)
        self.scavenged = table("scavenged", np.uint8)
        tallies = heap.tallies
        if tallies.ndim != 2 or tallies.shape[1] != NTALLIES:
            raise ValueError(f"kernels: tallies of shape {tallies.shape}")
        self.tallies = _ptr(tallies, np.int64)
        self.nclaimers = int(tallies.shape[0])

    def tally(self, me: int, column: int) -> int:
        """The address of claimer ``me``'s tally ``column``."""
        if not (0 <= me < self.nclaimers and 0 <= column < NTALLIES):
            raise ValueError(f"kernels: no tally {column} of claimer {me}")
        return self.tallies + (me * NTALLIES + column) * 8


_NWORDS = _ptr(CLASS_NWORDS, np.int64, NUM_CLASSES)
_CSIZE = _ptr(CLASS_SIZE, np.int64, NUM_CLASSES)


def tables(heap: Any) -> Tables:
    """``heap``'s :class:`Tables`, built on first use and kept in ``heap.kernel_tables``,
    which ``Heap.close`` drops with the mapping (so no address outlives it)."""
    t = heap.kernel_tables
    if t is None:
        t = heap.kernel_tables = Tables(heap)
    assert isinstance(t, Tables)
    return t


def sweep_check(t: Tables, spans: np.ndarray, h: int, nalloc: np.ndarray,
                out: np.ndarray) -> bool:
    """Phase 1 of a sweep of the claimed ``spans`` (int64, n) at heap sweepgen ``h``: pure
    reads, of what must be known before the first write.  Fills ``nalloc`` (int64, n:
    marked objects per span) and ``out`` (int64, 7: objects allocated before, pages,
    objects left, the object-bytes and occupied-pages deltas, spans left empty, their
    pages).  ``False`` if the batch is not the plain case (a span left empty must own its
    pages, as freeSpan checks)."""
    assert _lib is not None, unavailable()
    n = spans.size
    return bool(_lib.sweep_check(
        _ptr(spans, np.int64), n, h, _alloc_buf(h), SPAN_IN_USE, t.bits, t.maxw, t.npages,
        t.state, t.sweepgen, t.commit, t.specials, t.cls, t.npages_of, _NWORDS, _CSIZE,
        PAGE_SIZE, t.alloc_count, t.page_span, _ptr(nalloc, np.int64, n),
        _ptr(out, np.int64, 7)))


def sweep_commit(t: Tables, spans: np.ndarray, h: int, nalloc: np.ndarray, preserve: bool,
                 empties: np.ndarray, epages: np.ndarray, out: np.ndarray, me: int) -> int:
    """Phases 2 and 3 of a batch :func:`sweep_check` accepted (same ``spans``, ``h`` and
    ``nalloc``).  Unless ``preserve``, places each span in its set, or frees a span left
    empty (freeSpan's stores, in its order) and writes it to ``empties`` and its pages to
    ``epages`` (int64, n each), its pages tallied in claimer ``me``'s ``T_FREED_PAGES`` as
    they go free; returns how many it freed.  ``out[0]``: the bitmap words swept."""
    assert _lib is not None, unavailable()
    n = spans.size
    return int(_lib.sweep_commit(
        _ptr(spans, np.int64), n, h, _alloc_buf(h), t.bits, t.maxw, t.npages, t.cls,
        _NWORDS, t.nelems, t.alloc_count, t.freeindex, t.commit,
        t.sweepgen, t.span_set, _ptr(nalloc, np.int64, n), int(preserve), full_swept(h),
        partial_swept(h), t.state, t.npages_of, t.page_span, SPAN_DEAD, SET_NONE, PAGE_FREE,
        _ptr(empties, np.int64, n), _ptr(epages, np.int64, n), _ptr(out, np.int64, 1),
        t.tally(me, T_FREED_PAGES)))


def free_spans_plain(t: Tables, starts: np.ndarray, n: np.ndarray, out: np.ndarray,
                     me: int) -> bool:
    """freeSpan of the ascending in-use ``starts`` (int64, k): fills ``n`` (int64, k: each
    span's pages) and ``out`` (int64, 2: pages freed, pages of spans still counting
    objects), each span's pages tallied in claimer ``me``'s ``T_FREED_PAGES`` as they go
    free.  ``False``, nothing written, if a span is not in use or a page not its own."""
    assert _lib is not None, unavailable()
    k = starts.size
    return bool(_lib.free_spans_plain(
        _ptr(starts, np.int64), k, t.npages, SPAN_IN_USE, SPAN_DEAD, SET_NONE, PAGE_FREE,
        t.state, t.span_set, t.npages_of, t.page_span, t.alloc_count, _ptr(n, np.int64, k),
        _ptr(out, np.int64, 2), t.tally(me, T_FREED_PAGES)))


def carve(t: Tables, lo: int, count: int, npages: int, backed: bool,
          taken: np.ndarray | None, out: np.ndarray) -> int:
    """mheap._carve over ``[lo, heap end)``: the first ``count`` spans of ``npages`` pages
    the free runs from ``lo`` hold (of backed pages if ``backed``, else of free pages less
    the spans at offsets ``taken``, int64 ascending), their offsets from ``lo`` written to
    ``out`` (int64, at least ``count``).  Returns how many.  Pure reads."""
    assert _lib is not None, unavailable()
    if not 0 <= lo <= t.npages or npages < 1 or count < 0:
        raise ValueError(f"kernels.carve: lo {lo}, npages {npages}, count {count}")
    tk = np.empty(0, dtype=np.int64) if taken is None else taken
    return int(_lib.carve(t.page_span, t.scavenged, lo, t.npages, npages, count, PAGE_FREE,
                          int(backed), _ptr(tk, np.int64), tk.size, _ptr(out, np.int64, count)))


def _alloc_buf(h: int) -> int:
    """The alloc buffer (0/1) of spans awaiting the sweep of generation ``h`` (sweep.py)."""
    return ((h - 2) >> 1) & 1
