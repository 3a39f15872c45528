"""Finalizer specials and the finalizer queue (Go's addfinalizer / queuefinalizer / runfinq).

Theory of operation
-------------------
An object with a finalizer has its bit set in the span's finalizer bitmap (``fin_bits``, laid
out like the alloc and mark bitmaps).  When the sweeper finds such an object unmarked, it does
not free it: it *resurrects* it (sets its mark bit, so this sweep keeps it), removes the
finalizer bit, and appends ``(span, index)`` to the finalizer queue.  The finalizer runs later,
and the object, no longer special, is freed by a later cycle unless something keeps it alive.

The queue is a ring in shared memory: entries ``[head, tail)`` of ``finq`` (modulo its
capacity) are pending, each ``span << 16 | index``.  A push writes its entries first and bumps
``tail`` last (the commit point), so a crash mid-push leaves no half-visible entry.

The ring never overflows: a push that would overflow it runs the oldest pending finalizers
first (:func:`finq_push`).  One window is known: a sweeper killed after its push and before
its commit is re-swept with ``recover=True``, which does not queue again what is still in the
ring — but an entry of it that another push already ran is queued again (run twice).

Invariants: finalizer bits are a subset of alloc bits; an object is in the queue at most once;
``0 <= tail - head <= capacity``.
"""

from __future__ import annotations

import numpy as np

from sweeperd.errors import BadFinalizerTarget
from sweeperd.runtime.heap import H_FINQ_HEAD, H_FINQ_TAIL, SPAN_IN_USE, Heap
from sweeperd.runtime.sizeclasses import CLASS_NWORDS

ENTRY_SHIFT = 16


def set_finalizer(heap: Heap, span: int, idx: np.ndarray | int) -> None:
    """Attach a finalizer to allocated objects ``idx`` of ``span`` (Go's SetFinalizer)."""
    idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
    if heap.span_state[span] != SPAN_IN_USE:
        raise BadFinalizerTarget(f"span {span} is not in use")
    if idx.size == 0:
        return
    if idx.min() < 0 or idx.max() >= heap.span_nelems[span]:
        raise BadFinalizerTarget(f"object index out of range for span {span}")
    a = int(heap.alloc_buf(span))
    w, b = idx >> 6, (idx & 63).astype(np.uint64)
    alloc = heap.bits[a, :, span]
    if ((alloc[w] >> b) & np.uint64(1) == 0).any():
        raise BadFinalizerTarget(f"an object of span {span} is not allocated")
    mask = np.zeros(int(CLASS_NWORDS[heap.span_class[span]]), dtype=np.uint64)
    np.bitwise_or.at(mask, w, np.uint64(1) << b)
    heap.span_specials[span] = 1  # first: a sweeper that sees the flag reads the bits
    heap.fin_bits[: mask.size, span] |= mask


def finq_len(heap: Heap) -> int:
    return int(heap.header[H_FINQ_TAIL] - heap.header[H_FINQ_HEAD])


def finq_entries(heap: Heap) -> np.ndarray:
    """Pending entries, oldest first (a copy)."""
    cap = heap.finq.size
    head, tail = int(heap.header[H_FINQ_HEAD]), int(heap.header[H_FINQ_TAIL])
    return heap.finq[np.arange(head, tail) % cap].copy()


def finq_push(heap: Heap, spans: np.ndarray, idx: np.ndarray) -> int:
    """Queue finalizers of objects ``idx`` of ``spans`` (elementwise).  Heap lock held.

    Backpressure instead of overflow: Go's queue grows; this one lives in a fixed shared
    ring, so a pusher that finds it too full **runs** the oldest pending finalizers itself
    (for this model, running one is forgetting its entry: the object goes back to the
    workload) until the new ones fit — and if one push holds more than the whole ring, its
    oldest entries are run at once.  Returns how many finalizers the push ran.
    """
    heap.require_lock("specials.finq_push")
    entries = (np.asarray(spans, np.int64) << ENTRY_SHIFT) | np.asarray(idx, np.int64)
    if entries.size == 0:
        return 0
    cap = heap.finq.size
    ran = 0
    if entries.size > cap:
        ran, entries = entries.size - cap, entries[entries.size - cap:]
    excess = finq_len(heap) + entries.size - cap
    if excess > 0:
        heap.header[H_FINQ_HEAD] = int(heap.header[H_FINQ_HEAD]) + excess  # run the oldest
        ran += excess
    tail = int(heap.header[H_FINQ_TAIL])
    heap.finq[np.arange(tail, tail + entries.size) % cap] = entries
    heap.header[H_FINQ_TAIL] = tail + entries.size  # commit
    return ran


def run_finalizers(heap: Heap, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pop up to ``limit`` queued finalizers; returns their (spans, indices).

    "Running" a finalizer here means handing the object back to the workload, which decides
    whether it stays reachable; the heap itself only forgets the entry.
    """
    with heap.lock:  # sweepers push concurrently
        n = finq_len(heap) if limit is None else min(limit, finq_len(heap))
        e = finq_entries(heap)[:n]
        heap.header[H_FINQ_HEAD] = int(heap.header[H_FINQ_HEAD]) + n
    return e >> ENTRY_SHIFT, e & ((1 << ENTRY_SHIFT) - 1)
