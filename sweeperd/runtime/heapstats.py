"""Heap-wide figures: from the running counters in O(1), or from a scan of the span table.

Names follow Go's runtime/metrics classes: objects (bytes in allocated objects), unused
(free slots inside in-use spans), free (free pages still backed), released (free pages
returned to the OS, i.e. scavenged).  ``fragmentation`` is the part of ``unused`` in spans
that also hold an object: no scavenger can release it however long it runs, since the span's
pages stay in use (Go's anchor: keep every 10th object and nothing is released); ``unused``
also counts fresh or emptied spans a mutator holds, which are not stuck.  ``marked_bytes`` is
the live heap after a mark (mark bits of in-use spans), the base of the next heap goal.

:func:`heap_stats` sums the heap's running counters (heap.py), whatever the heap's size, and is
what the trigger check, the scrape and ``status`` read.  :func:`scan_heap_stats` computes the
same figures from the span table (a few vectorized passes, about a quarter of a second at
16 GiB): the truth the counters are tested against, and what :func:`rebase` sets them back to
after a death left a store without its count.  Invariant: with nothing in flight,
``heap_stats(h) == scan_heap_stats(h)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from sweeperd.runtime import owners
from sweeperd.runtime.heap import (
    C_CACHED_PAGES,
    C_COMMITTING_PAGES,
    C_IN_USE_PAGES,
    C_OBJECT_BYTES,
    C_OCCUPIED_PAGES,
    C_RELEASING_PAGES,
    C_SCAVENGED_PAGES,
    C_SPANS_IN_USE,
    MADVISE_ADVICES,
    NCOUNTERS,
    SPAN_IN_USE,
    T_ASSIST_CPU_NS,
    T_ASSIST_KERNEL_BYTES,
    T_ASSIST_RELEASED_PAGES,
    T_BYTES_ALLOCATED,
    T_COMMIT_FAILURES,
    T_CPU_NS,
    T_FINALIZERS_RUN,
    T_FREED_PAGES,
    T_MADVISE_BY,
    T_OBJECTS_ALLOCATED,
    T_OBJECTS_FREED,
    T_RELEASE_CPU_NS,
    T_RELEASE_RUNS,
    T_RELEASED_KERNEL_BYTES,
    T_RELEASED_PAGES,
    T_SWEPT_PAGES,
    T_SWEPT_SPANS,
    Heap,
    scavenging,
)
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.runtime.sweepgen import M32


@dataclass(frozen=True)
class HeapStats:
    heap_bytes: int
    in_use_bytes: int
    objects_bytes: int
    unused_bytes: int
    free_bytes: int
    released_bytes: int
    spans_in_use: int
    fragmentation_bytes: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def heap_stats(heap: Heap) -> HeapStats:
    """The heap's classes from the running counters: O(1) in the heap's size."""
    return _classes(heap, heap.counter_totals().tolist())


@dataclass(frozen=True)
class Books:
    """The books at one moment: the classes and the bytes in flight, from one read of the
    running counters (:func:`books`)."""

    stats: HeapStats
    releasing_bytes: int  # free pages a releaser has taken, madvise in flight
    cached_bytes: int  # pages of spans in mutators' mcaches
    committing_bytes: int  # released pages an allocator is backing again, not yet counted


def books(heap: Heap) -> Books:
    """:func:`heap_stats`, :func:`releasing_bytes` and :func:`cached_bytes` from **one** read
    of the counters.  Read apart, a release finishing between the reads leaves its pages
    counted backed by the first read and no longer in flight by the next, so the books'
    interval (backed less what is in flight) missed the kernel by that release (the load
    test saw 1.5% under heavy load).  O(1) in the heap's size."""
    t = heap.counter_totals().tolist()
    return Books(_classes(heap, t), t[C_RELEASING_PAGES] * PAGE_SIZE,
                 t[C_CACHED_PAGES] * PAGE_SIZE, t[C_COMMITTING_PAGES] * PAGE_SIZE)


def _scan_counters(heap: Heap) -> np.ndarray:
    """What every running counter should sum to, from a scan of the span table."""
    spans = np.flatnonzero(heap.span_state == SPAN_IN_USE)
    count = heap.span_alloc_count[spans].astype(np.int64)
    npages = heap.span_npages[spans].astype(np.int64)
    out = np.zeros(NCOUNTERS, dtype=np.int64)
    out[C_OBJECT_BYTES] = int((count * heap.elem_sizes(spans)).sum())
    out[C_IN_USE_PAGES] = int(npages.sum())
    out[C_SPANS_IN_USE] = spans.size
    out[C_OCCUPIED_PAGES] = int(npages[count > 0].sum())
    out[C_SCAVENGED_PAGES] = int(np.count_nonzero(heap.scavenged))
    out[C_RELEASING_PAGES] = sum(int(np.count_nonzero(heap.page_span[c] <= scavenging(0)))
                                 for c in _scan_chunks(heap))
    h = heap.sweepgen
    sg = heap.span_sweepgen[spans]
    out[C_CACHED_PAGES] = int(npages[(sg == (h + 1) & M32) | (sg == (h + 3) & M32)].sum())
    out[C_COMMITTING_PAGES] = 0  # a commit is in flight only inside init_spans, under the lock
    return out


def scan_heap_stats(heap: Heap) -> HeapStats:
    """The heap's classes from a scan of the span table (O(heap)): the counters' truth."""
    return _classes(heap, _scan_counters(heap).tolist())


def _classes(heap: Heap, t: list[int]) -> HeapStats:
    in_use = t[C_IN_USE_PAGES] * PAGE_SIZE
    objects = t[C_OBJECT_BYTES]
    released = t[C_SCAVENGED_PAGES] * PAGE_SIZE
    return HeapStats(heap.heap_bytes, in_use, objects, in_use - objects,
                     heap.heap_bytes - in_use - released, released, t[C_SPANS_IN_USE],
                     t[C_OCCUPIED_PAGES] * PAGE_SIZE - objects)


def counter_drift(heap: Heap) -> np.ndarray:
    """Counters minus the scan, per counter (all zero when nothing is in flight)."""
    return heap.counter_totals() - _scan_counters(heap)


def rebase(heap: Heap) -> np.ndarray:
    """Set the running counters back to the truth, through this process's own row; returns
    the drift it removed.  Only when nothing moves (no store may be between it and its
    count): the coordinator calls it at the start of a sweep after a worker died."""
    with heap.lock:  # releasers take and finish pages under it: their counts stay still
        drift = counter_drift(heap)
        heap.counters[heap.me] -= drift
    return drift
SCAN_PAGES = 1 << 16  # the scrape's scans go this many pages at a time


def _scan_chunks(heap: Heap) -> Iterator[slice]:
    """The page table in slices of SCAN_PAGES.  The scrape's scans run in the metrics thread
    of a long-lived process: whole-table temporaries (16 MiB of indices at 16 GiB) would raise
    glibc's dynamic mmap threshold and stay in that thread's arena (seen: the coordinator's
    private memory +45 MiB in 200 s); chunks keep every temporary under 1 MiB."""
    for lo in range(0, heap.npages, SCAN_PAGES):
        yield slice(lo, min(lo + SCAN_PAGES, heap.npages))


def releasing_bytes(heap: Heap) -> int:
    """Bytes of free pages a releaser has taken and not yet finished (madvise in flight): the
    books count them backed until the release finishes.  From the running counters (O(1);
    a racy sum of a moving figure, exact whenever no release is between its take and its
    count)."""
    return int(heap.counters[:, C_RELEASING_PAGES].sum()) * PAGE_SIZE


def cached_bytes(heap: Heap) -> int:
    """Bytes of the spans mutators hold in their mcaches (sweepgen h+1 or h+3): in use by the
    books, but a mutator may not have touched all of their pages yet.  From the running
    counters, like :func:`releasing_bytes`."""
    return int(heap.counters[:, C_CACHED_PAGES].sum()) * PAGE_SIZE


def marked_bytes(heap: Heap) -> int:
    """Bytes of marked objects in in-use spans (call between mark and the sweepgen bump)."""
    spans = np.flatnonzero(heap.span_state == SPAN_IN_USE)
    if spans.size == 0:
        return 0
    total = 0
    for abuf, cols in heap.by_alloc_buf(spans):
        n = np.bitwise_count(heap.bits[abuf ^ 1][:, cols]).sum(axis=0, dtype=np.int64)
        total += int((n * heap.elem_sizes(cols)).sum())
    return total


@dataclass(frozen=True)
class ReleaseTally:
    """Releases of a group of claimers, from their tallies: ``pages`` advised (the books) in
    ``runs``, ``kernel_bytes`` the kernel had backed in them, ``madvise_calls`` by advice
    (heap.MADVISE_ADVICES), and ``cpu_ns`` (the scavenger's process CPU; a freer's thread
    time in its releases)."""

    pages: int = 0
    runs: int = 0
    kernel_bytes: int = 0
    madvise_calls: tuple[int, ...] = (0,) * len(MADVISE_ADVICES)
    cpu_ns: int = 0

    def calls(self) -> dict[str, int]:
        """madvise calls by advice name."""
        return dict(zip(MADVISE_ADVICES, self.madvise_calls, strict=True))


@dataclass(frozen=True)
class SweepTally:
    """Sweeps a group of claimers committed: spans, their pages, the objects they freed,
    and the finalizers they ran to make room in a full queue."""

    spans: int = 0
    pages: int = 0
    objects_freed: int = 0
    finalizers_run: int = 0


@dataclass(frozen=True)
class AllocTally:
    """What the mutators allocated: objects (alloc bits set and counted) and their bytes."""

    objects: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Tallies:
    """The heap's tallies by kind of worker (O(1) in the heap's size: 256 rows).

    ``scavenger``: the scavenger's releases and the coordinator's (a dead scavenger's runs,
    FreeOSMemory); ``on_free``: the freers' own (the eager policy); ``background``: sweeps of
    the sweepers and the coordinator (recovery, spans the shards missed); ``mutator``: the
    mutators' on-demand sweeps; ``alloc``: the mutators' allocations; ``freed_pages``: pages
    returned to the page heap, by anyone."""

    scavenger: ReleaseTally = ReleaseTally()
    on_free: ReleaseTally = ReleaseTally()
    background: SweepTally = SweepTally()
    mutator: SweepTally = SweepTally()
    alloc: AllocTally = AllocTally()
    freed_pages: int = 0
    commit_failures: int = 0  # span allocations refused by the commit limit (mheap.commit)
    assist_released_pages: int = 0  # released by allocation over the limit (Go 1.21's eager)
    assist_cpu_ns: int = 0  # ... taking this thread CPU (Go's scavenge assist time)

    @property
    def objects_freed(self) -> int:
        return self.background.objects_freed + self.mutator.objects_freed


_MADVISE_COLS = [T_MADVISE_BY[a] for a in MADVISE_ADVICES]


def _release(t: list[int], cpu_col: int) -> ReleaseTally:
    return ReleaseTally(t[T_RELEASED_PAGES], t[T_RELEASE_RUNS], t[T_RELEASED_KERNEL_BYTES],
                        tuple(t[c] for c in _MADVISE_COLS), t[cpu_col])


def _sweep(t: list[int]) -> SweepTally:
    return SweepTally(t[T_SWEPT_SPANS], t[T_SWEPT_PAGES], t[T_OBJECTS_FREED],
                      t[T_FINALIZERS_RUN])


def read_tallies(heap: Heap) -> Tallies:
    """The heap's tallies summed by kind of worker (see :class:`Tallies`)."""
    rows = heap.tallies
    sweepers = rows[:owners.MUTATOR_BASE].sum(axis=0).tolist()
    mutators = rows[owners.MUTATOR_BASE:owners.MAX_SHARDS].sum(axis=0).tolist()
    scav = rows[owners.SCAVENGER].tolist()
    coord = rows[owners.COORDINATOR].tolist()
    everyone = rows.sum(axis=0).tolist()
    freers = [s + m for s, m in zip(sweepers, mutators, strict=True)]
    both = [a + b for a, b in zip(scav, coord, strict=True)]
    bg = [a + b for a, b in zip(sweepers, coord, strict=True)]
    freers[T_RELEASED_PAGES] -= freers[T_ASSIST_RELEASED_PAGES]  # the assist's: not freers'
    freers[T_RELEASED_KERNEL_BYTES] -= freers[T_ASSIST_KERNEL_BYTES]
    return Tallies(scavenger=_release(both, T_CPU_NS), on_free=_release(freers, T_RELEASE_CPU_NS),
                   background=_sweep(bg), mutator=_sweep(mutators),
                   alloc=AllocTally(mutators[T_OBJECTS_ALLOCATED], mutators[T_BYTES_ALLOCATED]),
                   freed_pages=everyone[T_FREED_PAGES],
                   commit_failures=everyone[T_COMMIT_FAILURES],
                   assist_released_pages=everyone[T_ASSIST_RELEASED_PAGES],
                   assist_cpu_ns=everyone[T_ASSIST_CPU_NS])
