"""The shared heap: arena, span table and bitmaps, all in shared memory.

Theory of operation
-------------------
The heap is two memfd regions that any number of processes map at once:

* the **arena**: ``npages`` Go pages of 8 KiB where object payloads live;
* the **metadata**: a header, per-page arrays, and the bitmaps.

A span is a run of pages and is named by its **start page**; every per-span field is an array
indexed by page (struct-of-arrays), meaningful only at the start page of an in-use span.
``page_span[p]`` is, for every page, the start page of the in-use span holding it, or -1 when
the page is free (Go's ``h.spans``).  Free pages need no other structure: a run of consecutive
free pages *is* a free run, so coalescing of free neighbours is implicit (as in Go's bitmap
page allocator).  ``scavenged[p]`` is set when page ``p``'s memory has been returned to the OS.

Bitmaps are stored **transposed**: ``bits[buf, w, p]`` is word ``w`` of bitmap buffer ``buf``
of the span starting at page ``p``.  A span of a class with ``nwords`` bitmap words touches
rows ``0..nwords-1`` at its own column only, so the metadata file's real backing grows with the
rows in use (two rows per buffer for the 64-byte class), not with the worst case, and a batch of
spans of one class is a 2-D ``(nwords, nspans)`` slab that numpy sweeps at once.  Spans never
share a start page, so columns never overlap and need no allocator.

Each span has two bitmap buffers, alloc and mark, and which is which flips at every sweep (Go
swaps the ``allocBits``/``gcmarkBits`` pointers).  The selector is the parity of
``sweptgen // 2``, where ``sweptgen`` is the heap sweepgen at which the span was last swept (or
allocated).  Writing ``sweptgen`` is therefore the single store that commits a sweep; it shares
an 8-byte word with ``nsweeps`` (the sweep count the exactly-once check reads), so the one
store also counts the sweep (``Heap.commit_sweep``).

Invariants (checked by :func:`sweeperd.check.check_heap`):

* ``page_span`` of every page of an in-use span is its start page; a free page holds
  ``PAGE_FREE`` (-1), or ``scavenging(owner)`` (-2 and below) while claimer ``owner``
  releases it (the scavenger, or under the ``eager`` policy whoever freed it);
* ``span_state`` is IN_USE exactly at start pages of in-use spans, DEAD everywhere else;
* ``scavenged`` is set only on free pages;
* for a swept span ``alloc_count == popcount(alloc bits)``, no bit at or beyond ``nelems``,
  finalizer bits are a subset of alloc bits;
* bitmap columns of pages that are not in-use span starts are all zero in the mark and
  finalizer buffers (an empty span is freed only after its bitmaps became zero).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeperd.errors import HeapCorrupt, LockNotHeld
from sweeperd.runtime.owners import ANONYMOUS, MAX_SHARDS, OWNER_BITS, SCAVENGER
from sweeperd.runtime.sizeclasses import CLASS_SIZE, MAX_BITMAP_WORDS, PAGE_SHIFT, PAGE_SIZE
from sweeperd.sys.shm import OS_PAGE, FlockLock, RegionHandle, SharedRegion

MAGIC = 0x5357_4545_5045_5244  # "SWEEPERD"
LAYOUT_VERSION = 11

# page_span values that are not a span's start page.
PAGE_FREE = -1  # free: the allocator may take it
_SCAVENGING_TOP = -2  # free, taken out of the allocator's reach by a releaser: scavenging(owner)


def scavenging(owner: int) -> int:
    """The ``page_span`` value of a free page that claimer ``owner`` is releasing: the mark
    names its releaser, so the recovery of a dead one finishes its pages and nobody else's."""
    return _SCAVENGING_TOP - owner


PAGE_SCAVENGING = scavenging(SCAVENGER)  # the scavenger process's mark

# Span states (Go's mSpanState).
SPAN_DEAD = 0
SPAN_IN_USE = 1

# Header words.
H_MAGIC = 0
H_VERSION = 1
H_NPAGES = 2
H_SWEEPGEN = 3
H_SEARCH_ADDR = 4  # every page below this one is in use (Go's searchAddr)
# word 5 is unused (it held a cycle count no reader used)
H_FINQ_HEAD = 6
H_FINQ_TAIL = 7
H_FINQ_CAP = 8
H_SCAV_SEARCH = 9  # no scavenger candidate at or above this page (scavenge.py)
H_BENCH_GO = 10  # benchmark rounds: workers start round r when this reaches r
H_BENCH_READY = 11  # ... and spin (instead of sleeping) once this reaches r
H_HEAP_GOAL = 12  # the coordinator's current heap goal (bytes), for the scavenger
H_MEMORY_LIMIT = 13  # memory limit in bytes, 0 = none
H_COMMIT_LIMIT = 14  # the arena's backing may not exceed this many bytes (mheap.commit), 0 = none
H_LOCK_HOLDER = 15  # pid of the heap lock's holder, 0 = none (FlockLock; stale if it died)
HEADER_WORDS = 64

# Running counters (columns of ``counters``): every change of allocCount, of the pages in use or
# of scavenged bits adds its delta to the changing process's own row (one writer per row, no
# lock), so the heap's figures are a sum over 256 rows, whatever the heap's size: the trigger
# check, the scrape and ``status`` are O(1).  A process killed between a store and its count
# leaves them off; the coordinator rebases them on a scan after a death (heapstats.rebase).
C_OBJECT_BYTES = 0  # bytes of allocated objects (Go's /memory/classes/heap/objects)
C_IN_USE_PAGES = 1  # pages of in-use spans
C_SPANS_IN_USE = 2  # in-use spans
C_OCCUPIED_PAGES = 3  # pages of in-use spans holding at least one object (fragmentation's base)
C_SCAVENGED_PAGES = 4  # pages with their scavenged bit set (all free: Go's heap/released)
C_RELEASING_PAGES = 5  # free pages a releaser has taken and not finished (madvise in flight)
C_CACHED_PAGES = 6  # pages of spans cached in mutators' mcaches (sweepgen h+1 or h+3)
C_COMMITTING_PAGES = 7  # released pages an allocator is backing again (commit in flight)
NCOUNTERS = 8

# Tallies (columns of ``tallies``): per claimer, what it has done since the heap was made.
# They only grow, one writer per row, never rebased (a scan cannot recount history), and
# kept when the process dies, so its replacement carries on and nothing is lost.  The row of a
# dead process is written once more, by the coordinator's recovery, before its replacement
# starts (a batch it had in flight: see the P_* columns below).
T_FREED_PAGES = 0  # pages returned to the page heap (freeSpan): gperftools' scavenge counter
T_RELEASED_PAGES = 1  # pages released (advised) by this claimer, by the books
T_RELEASE_RUNS = 2  # ... in this many runs
T_RELEASED_KERNEL_BYTES = 3  # ... of which the kernel had this many bytes backed
T_MADVISE_CALLS = 4  # ... in this many system calls (every advice; by advice: T_MADVISE_BY)
T_RELEASE_CPU_NS = 5  # CPU (thread time, ns) a freer spent releasing what it freed (eager)
T_CPU_NS = 6  # the scavenger's process CPU time (ns), tallied at every wake
T_SWEPT_SPANS = 7  # spans whose sweep this claimer committed
T_SWEPT_PAGES = 8  # ... holding this many pages
T_OBJECTS_FREED = 9  # ... freeing this many objects
T_FINALIZERS_RUN = 10  # finalizers a sweep ran to make room in a full queue
T_OBJECTS_ALLOCATED = 11  # objects a mutator allocated (alloc bits set and counted)
T_BYTES_ALLOCATED = 12  # ... of this many bytes (object sizes)
# In-flight batches: a batch writes its new totals here (absolute, so applying them twice is
# applying them once), raises its flag, does the work, then copies them to the T_* columns and
# lowers the flag.  The coordinator, recovering a dead claimer, applies a raised flag's totals
# and does not count again what it finishes of that batch (recovery.py).  An allocation keeps
# its totals before and after, and recovery decides by its flag (malloc.recover_tally).
P_RELEASED_PAGES = 13  # a release: the T_RELEASED_PAGES, T_RELEASE_RUNS and
P_RELEASE_RUNS = 14  # T_RELEASED_KERNEL_BYTES it will have made (kernel bytes counted before
P_RELEASED_KERNEL_BYTES = 15  # the madvise: nobody else touches a page it has taken)
F_RELEASE = 16  # 1 from just before its madvise until its totals are applied
P_SWEPT_SPANS = 17  # a sweep batch's T_SWEPT_SPANS, T_SWEPT_PAGES and T_OBJECTS_FREED once
P_SWEPT_PAGES = 18  # it is committed (T_FINALIZERS_RUN is added as they run)
P_OBJECTS_FREED = 19
F_SWEEP = 20  # 1 from just before its first write until its totals are applied
P_OBJECTS_ALLOCATED = 21  # an allocation's T_OBJECTS_ALLOCATED and T_BYTES_ALLOCATED after
P_BYTES_ALLOCATED = 22  # it, and (P_BASE_*) before it: recovery sets them absolutely
P_BASE_OBJECTS = 23
P_BASE_BYTES = 24
F_ALLOC = 25  # 1 from before its alloc bits; 2 once its totals stand, before its allocCounts
MADVISE_ADVICES = ("REMOVE", "REMOVE_vectored", "DONTNEED", "FREE", "NOHUGEPAGE", "HUGEPAGE")
T_MADVISE_BY = {a: 26 + i for i, a in enumerate(MADVISE_ADVICES)}  # calls by advice
T_COMMIT_FAILURES = 26 + len(MADVISE_ADVICES)  # span allocations refused: backing them
# ... would pass H_COMMIT_LIMIT (mheap.commit)
T_ASSIST_RELEASED_PAGES = T_COMMIT_FAILURES + 1  # of T_RELEASED_PAGES, released by allocation
T_ASSIST_CPU_NS = T_COMMIT_FAILURES + 2  # ... taking this CPU (Go 1.21's scavenge assist)
T_ASSIST_KERNEL_BYTES = T_COMMIT_FAILURES + 3  # ... of which the kernel had this many backed
NTALLIES = T_COMMIT_FAILURES + 4

# (the T_* totals, the P_* new totals) of each kind of batch, applied by Heap.apply_batch
RELEASE_BATCH = ((T_RELEASED_PAGES, T_RELEASE_RUNS, T_RELEASED_KERNEL_BYTES),
                 (P_RELEASED_PAGES, P_RELEASE_RUNS, P_RELEASED_KERNEL_BYTES), F_RELEASE)
SWEEP_BATCH = ((T_SWEPT_SPANS, T_SWEPT_PAGES, T_OBJECTS_FREED),
               (P_SWEPT_SPANS, P_SWEPT_PAGES, P_OBJECTS_FREED), F_SWEEP)
Batch = tuple[tuple[int, ...], tuple[int, ...], int]

_U1 = np.uint64(1)
_U32 = np.uint64(32)
assert np.little_endian, "the commit word's halves assume a little-endian machine"

# Sweepgen starts above zero so that h-2 never goes below zero.
INITIAL_SWEEPGEN = 4
DEFAULT_FINQ_CAP = 1 << 16


def _align(n: int, a: int = OS_PAGE) -> int:
    return (n + a - 1) // a * a


# name, dtype, shape (in terms of npages / finq_cap)
def _fields(npages: int, finq_cap: int) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    return [
        ("header", np.dtype(np.int64), (HEADER_WORDS,)),
        ("page_span", np.dtype(np.int32), (npages,)),
        ("scavenged", np.dtype(np.uint8), (npages,)),
        ("span_npages", np.dtype(np.int32), (npages,)),
        ("span_class", np.dtype(np.uint8), (npages,)),
        ("span_state", np.dtype(np.uint8), (npages,)),
        ("span_set", np.dtype(np.uint8), (npages,)),
        ("span_nelems", np.dtype(np.uint16), (npages,)),
        ("span_alloc_count", np.dtype(np.uint16), (npages,)),
        ("span_freeindex", np.dtype(np.uint16), (npages,)),
        ("span_sweepgen", np.dtype(np.uint32), (npages,)),
        # low half sweptgen, high half nsweeps: one 8-byte store commits a sweep and counts it
        ("span_commit", np.dtype(np.uint64), (npages,)),
        ("span_specials", np.dtype(np.uint8), (npages,)),
        ("span_owner", np.dtype(np.uint8), (npages,)),
        ("bits", np.dtype(np.uint64), (2, MAX_BITMAP_WORDS, npages)),
        ("fin_bits", np.dtype(np.uint64), (MAX_BITMAP_WORDS, npages)),
        ("finq", np.dtype(np.int64), (finq_cap,)),
        # per claimer: cursor, end, original lo, hi, last chunk lo, hi (shards.py)
        ("shards", np.dtype(np.int64), (MAX_SHARDS, 6)),
        # per claimer id: CLOCK_MONOTONIC ns of its process's last beat (wire/beat.py)
        ("beats", np.dtype(np.int64), (1 << OWNER_BITS,)),
        # per claimer id: its running deltas of the heap's figures (C_* below)
        ("counters", np.dtype(np.int64), (1 << OWNER_BITS, NCOUNTERS)),
        # per claimer id: what it has done (T_* below)
        ("tallies", np.dtype(np.int64), (1 << OWNER_BITS, NTALLIES)),
    ]


@dataclass(frozen=True)
class Layout:
    npages: int
    finq_cap: int
    offsets: dict[str, int]
    meta_bytes: int

    @classmethod
    def compute(cls, npages: int, finq_cap: int = DEFAULT_FINQ_CAP) -> Layout:
        off = 0
        offsets = {}
        for name, dt, shape in _fields(npages, finq_cap):
            offsets[name] = off
            off = _align(off + dt.itemsize * int(np.prod(shape)))
        return cls(npages, finq_cap, offsets, off)


@dataclass(frozen=True)
class HeapHandle:
    """Plain description of a heap for another process (JSON-able)."""

    arena: RegionHandle
    meta: RegionHandle
    npages: int
    finq_cap: int

    def to_dict(self) -> dict[str, object]:
        return {
            "arena": self.arena.to_dict(),
            "meta": self.meta.to_dict(),
            "npages": self.npages,
            "finq_cap": self.finq_cap,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeapHandle:
        return cls(
            RegionHandle.from_dict(d["arena"]),
            RegionHandle.from_dict(d["meta"]),
            int(d["npages"]),
            int(d["finq_cap"]),
        )


class Heap:
    """A mapping of the shared heap: numpy views over the arena and metadata regions.

    The per-span arrays are public attributes named like Go's mspan fields
    (``span_alloc_count`` is ``s.allocCount`` of every span at once).
    """

    header: np.ndarray
    page_span: np.ndarray
    scavenged: np.ndarray
    span_npages: np.ndarray
    span_class: np.ndarray
    span_state: np.ndarray
    span_set: np.ndarray
    span_nelems: np.ndarray
    span_alloc_count: np.ndarray
    span_freeindex: np.ndarray
    span_sweepgen: np.ndarray
    span_commit: np.ndarray
    span_sweptgen: np.ndarray  # views of span_commit's halves
    span_nsweeps: np.ndarray
    span_specials: np.ndarray
    span_owner: np.ndarray
    bits: np.ndarray
    fin_bits: np.ndarray
    finq: np.ndarray
    shards: np.ndarray
    beats: np.ndarray
    counters: np.ndarray
    tallies: np.ndarray

    def __init__(self, arena: SharedRegion, meta: SharedRegion, layout: Layout) -> None:
        self.arena_region = arena
        self.meta_region = meta
        self.layout = layout
        self.npages = layout.npages
        assert meta.mmap is not None and arena.mmap is not None
        for name, dt, shape in _fields(layout.npages, layout.finq_cap):
            count = int(np.prod(shape))
            arr = np.frombuffer(meta.mmap, dtype=dt, count=count, offset=layout.offsets[name])
            setattr(self, name, arr.reshape(shape))
        # the two halves of each commit word (little-endian: sweptgen is the low one)
        halves = self.span_commit.view(np.uint32)
        self.span_sweptgen = halves[0::2]
        self.span_nsweeps = halves[1::2]
        self._commit_i64 = self.span_commit.view(np.int64)  # for reads of sweptgen's low bits
        self.arena = np.frombuffer(arena.mmap, dtype=np.uint8)
        self.arena64 = self.arena.view(np.uint64)
        self.kernel_tables: Any = None  # kernels.py's addresses of these arrays, once used
        # The heap lock (Go's mheap_.lock, plus the atomics of span claims), shared by every
        # process that maps the heap and released by the kernel if its holder is killed.
        # Held for claims, page-heap changes and finalizer-queue pushes, never a whole sweep.
        self.lock = FlockLock(meta.fd, self.header[H_LOCK_HOLDER:H_LOCK_HOLDER + 1])
        # whose row of ``counters`` this process writes: its claimer id (owners.py)
        self.me = ANONYMOUS
        # called as on_free(starts, npages) after freeSpan returned spans to the page heap:
        # the eager policy's release (installed by a process that frees, never shared)
        self.on_free: Callable[[np.ndarray, np.ndarray], None] | None = None
        # called as on_alloc_scav(pages) after an allocation took that many released pages,
        # out of the heap lock: Go 1.21's scavenge assist (scavenge.ScavengeAssist)
        self.on_alloc_scav: Callable[[int], int] | None = None

    # --- life cycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, heap_bytes: int, finq_cap: int = DEFAULT_FINQ_CAP) -> Heap:
        if heap_bytes < PAGE_SIZE or heap_bytes % PAGE_SIZE:
            raise ValueError(
                f"heap size must be a positive multiple of {PAGE_SIZE} bytes, got {heap_bytes}"
            )
        npages = heap_bytes >> PAGE_SHIFT
        if npages >= 2**31:
            raise ValueError(f"heap of {npages} pages is too large (page index is int32)")
        layout = Layout.compute(npages, finq_cap)
        arena = SharedRegion.create("sweeperd-arena", heap_bytes)
        try:
            meta = SharedRegion.create("sweeperd-meta", layout.meta_bytes)
        except BaseException:
            arena.close()
            raise
        h = cls(arena, meta, layout)
        h.page_span[:] = -1
        h.scavenged[:] = 1  # fresh heap counts as scavenged: never release untouched memory
        h.count(C_SCAVENGED_PAGES, npages)
        hd = h.header
        hd[H_NPAGES] = npages
        hd[H_SWEEPGEN] = INITIAL_SWEEPGEN
        hd[H_SEARCH_ADDR] = 0
        hd[H_FINQ_CAP] = finq_cap
        hd[H_SCAV_SEARCH] = npages
        hd[H_VERSION] = LAYOUT_VERSION
        hd[H_MAGIC] = MAGIC  # last: the header is valid from here on
        return h

    @classmethod
    def attach(cls, handle: HeapHandle) -> Heap:
        layout = Layout.compute(handle.npages, handle.finq_cap)
        arena = SharedRegion.attach(handle.arena)
        try:
            meta = SharedRegion.attach(handle.meta)
        except BaseException:
            arena.close()
            raise
        h = cls(arena, meta, layout)
        if h.header[H_MAGIC] != MAGIC or h.header[H_VERSION] != LAYOUT_VERSION:
            h.close()
            raise HeapCorrupt("attached region is not a sweeperd heap of this layout version")
        return h

    @property
    def handle(self) -> HeapHandle:
        return HeapHandle(
            self.arena_region.handle, self.meta_region.handle, self.npages, self.layout.finq_cap
        )

    def close(self, dying: bool = False) -> None:
        """Unmap the heap.  ``dying``: this process is ending on an exception whose frames
        may still hold numpy views of the mapping, so an unmap refused for them is left to
        the kernel at exit instead of raised over the exception that matters."""
        if dying:
            with contextlib.suppress(RuntimeError):
                self.close()
            return
        for name, _, _ in _fields(0, 0):
            self.__dict__.pop(name, None)
        for name in ("arena", "span_sweptgen", "span_nsweeps", "_commit_i64"):
            self.__dict__.pop(name, None)
        self.__dict__.pop("arena64", None)
        self.kernel_tables = None  # addresses into the mapping closed below
        self.lock.holder = None  # (a view of the header)
        try:
            self.arena_region.close()
        finally:
            self.meta_region.close()

    def __enter__(self) -> Heap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- header ------------------------------------------------------------------------------

    @property
    def sweepgen(self) -> int:
        return int(self.header[H_SWEEPGEN])

    @property
    def heap_bytes(self) -> int:
        return self.npages * PAGE_SIZE

    # --- queries (vectorized over the whole span table) ---------------------------------------

    def in_use_spans(self) -> np.ndarray:
        """Start pages of all in-use spans, ascending."""
        return np.flatnonzero(self.span_state == SPAN_IN_USE)

    def alloc_buf(self, spans: Any) -> Any:
        """Index (0 or 1) of each span's alloc bitmap buffer (an array for an array of spans,
        a numpy scalar for one span); the mark buffer is the other."""
        return (self._commit_i64[spans] >> 1) & 1  # bit 1 of sweptgen, the low half

    def elem_sizes(self, spans: np.ndarray | slice) -> np.ndarray:
        """Object size of each span (a large span's one object is the whole span)."""
        cls = self.span_class[spans]
        return np.where(cls == 0, self.span_npages[spans].astype(np.int64) * PAGE_SIZE,
                        CLASS_SIZE[cls])

    def commit_sweep(self, spans: Any, h: int) -> None:
        """Commit the sweep of ``spans`` at heap sweepgen ``h``: set each one's sweptgen to ``h``
        and add one to its nsweeps, in a single aligned 8-byte store per span, so a death can
        never leave one without the other (the exactly-once check counts commits)."""
        low = np.uint64(h & 0xFFFF_FFFF)
        if isinstance(spans, slice):  # a run of spans: in place, each word stored once
            v = self.span_commit[spans]
            np.bitwise_or((v >> _U32) + _U1 << _U32, low, out=v)
            return
        w = self.span_commit[spans]
        self.span_commit[spans] = ((w >> _U32) + _U1 << _U32) | low

    def count(self, counter: int, delta: int) -> None:
        """Add ``delta`` to this process's row of the running counters."""
        if delta:
            self.counters[self.me, counter] += delta

    def tally(self, column: int, delta: int) -> None:
        """Add ``delta`` to this process's row of the tallies."""
        if delta:
            self.tallies[self.me, column] += delta

    def begin_batch(self, batch: Batch, deltas: tuple[int, ...], flag: int = 1) -> None:
        """Write this process's new totals for an in-flight batch of kind ``batch`` (the
        ``*_BATCH`` tuples) and raise its flag: from here a death counts the batch as done
        (the coordinator's recovery applies them).  Call just before the batch's first
        effect that recovery would otherwise count."""
        row = self.tallies[self.me]
        tcols, pcols, fcol = batch
        for t, p, d in zip(tcols, pcols, deltas, strict=True):
            row[p] = row[t] + d
        row[fcol] = flag

    def apply_batch(self, batch: Batch, owner: int | None = None) -> None:
        """Apply row ``owner``'s (default: this process's) in-flight totals of kind ``batch``
        and lower its flag; idempotent (the totals are absolute)."""
        row = self.tallies[self.me if owner is None else owner]
        tcols, pcols, fcol = batch
        if row[fcol]:
            for t, p in zip(tcols, pcols, strict=True):
                row[t] = row[p]
            row[fcol] = 0

    def objects_bytes(self) -> int:
        """Bytes of allocated objects, from the running counters (O(1) in the heap's size)."""
        return int(self.counters[:, C_OBJECT_BYTES].sum())

    def in_use_pages(self) -> int:
        """Pages of in-use spans, from the running counters."""
        return int(self.counters[:, C_IN_USE_PAGES].sum())

    def counter_totals(self) -> np.ndarray:
        """Every running counter summed over the rows (index with ``C_*``)."""
        return self.counters.sum(axis=0)

    def by_alloc_buf(self, cols: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Split spans ``cols`` by which buffer is their alloc bitmap: yields ``(buf, the
        spans whose alloc buffer is buf)`` for each non-empty group."""
        a = self.alloc_buf(cols)
        for buf in (0, 1):
            sel = cols[a == buf]
            if sel.size:
                yield buf, sel

    def require_lock(self, who: str) -> None:
        """Fail by name unless this process holds the heap lock (a precondition of ``who``)."""
        if not self.lock.held:
            raise LockNotHeld(f"{who} needs the heap lock")

    def meta_backed_bytes(self) -> int:
        return self.meta_region.backed_bytes()

    def arena_backed_bytes(self) -> int:
        return self.arena_region.backed_bytes()

    # --- snapshots, for tests and the batch ≡ one-by-one equivalence ------------------------

    def metadata_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, _, _ in _fields(0, 0):
            yield name, getattr(self, name)

    def snapshot(self) -> dict[str, np.ndarray]:
        return {name: arr.copy() for name, arr in self.metadata_arrays()}

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        for name, arr in self.metadata_arrays():
            arr[...] = snap[name]


def span_ix(cols: np.ndarray) -> slice | np.ndarray:
    """Index for the ascending span starts ``cols``: a slice when they are a contiguous run
    (numpy then takes views instead of gathers, several times faster), else ``cols``."""
    if cols.size and int(cols[-1]) - int(cols[0]) == cols.size - 1:
        return slice(int(cols[0]), int(cols[0]) + cols.size)
    return cols
