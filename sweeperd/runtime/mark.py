"""The mark step: set the mark bits of the objects the workload says are live.

Liveness comes from the mutators' workload model, not from scanning pointers, so marking is a
vectorized scatter of bits into each span's mark buffer (the buffer that is not its alloc
buffer).  It runs while no span is being swept (between sweep termination and the next
``sweepgen += 2``), as Go's mark phase does.  It deliberately does not check that a marked
object is allocated: a mark on a free slot is the corruption the sweeper must catch ("found
pointer to free object").

Several mutators mark at once, and two mutators' live objects can share a span and so a
bitmap word: the scatter is a plain read-modify-write of 64-bit words, so it runs under the
heap lock, or one mutator's OR overwrites another's and a live object is freed (found as "sweep
increased allocation count" a cycle later, when the lost object is marked again).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweeperd.errors import BadObjectIndex, BadSpanState
from sweeperd.runtime.heap import SPAN_IN_USE, Heap
from sweeperd.runtime.sizeclasses import CLASS_NWORDS

MARK_BATCH = 1 << 18  # objects per scatter: bounds the temporaries (~40 B an object: ~15 MiB,
# in sys/cgroup.MUTATOR_EXTRA_MIB; as fast a mark as 2^21 on steady)


def mark_objects(heap: Heap, spans: np.ndarray, idx: np.ndarray) -> None:
    """Mark objects ``idx[i]`` of spans ``spans[i]`` (elementwise; duplicates are fine), in
    batches of :data:`MARK_BATCH`, so that a mark of 100 M live objects needs tens of MiB of
    temporaries, not gigabytes."""
    for lo in range(0, len(spans), MARK_BATCH):
        _mark_batch(heap, np.asarray(spans[lo : lo + MARK_BATCH], dtype=np.int64),
                    np.asarray(idx[lo : lo + MARK_BATCH], dtype=np.int64))


def _mark_batch(heap: Heap, spans: np.ndarray, idx: np.ndarray) -> None:
    if spans.size == 0:
        return
    _check(heap, spans, idx)
    mbuf = heap.alloc_buf(spans) ^ 1
    w = idx >> 6
    npages = heap.npages
    flat = (mbuf * 16 + w) * npages + spans  # index into bits viewed as one flat array
    order = np.argsort(flat, kind="stable")
    flat = flat[order]
    vals = np.uint64(1) << (idx[order] & 63).astype(np.uint64)
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    ored = np.bitwise_or.reduceat(vals, starts)
    with heap.lock:  # read-modify-write of words another marker may share
        heap.bits.reshape(-1)[flat[starts]] |= ored


@dataclass(frozen=True)
class MarkPlan:
    """The mark of a fixed set of objects reduced to the words it sets: for each distinct
    (span, bitmap word) the OR of its objects' bits.  Built once (:meth:`of`: a sort of the
    objects), applied every cycle (:meth:`apply`: a gather of the spans' mark buffers and
    one scatter, no sort) for as long as the set stays the same — a mutator's kept objects
    between the marks that add to them or drop them.  13 bytes a word."""

    spans: np.ndarray  # int32, one per distinct word
    words: np.ndarray  # uint8: the word within the span's bitmap
    bits: np.ndarray  # uint64: the bits its objects set
    nbytes: int  # bytes of the objects

    @classmethod
    def of(cls, heap: Heap, spans: np.ndarray, idx: np.ndarray) -> MarkPlan:
        """The plan of objects ``idx[i]`` of ``spans[i]`` (duplicates fine); the checks and
        errors of :func:`mark_objects`."""
        spans = np.asarray(spans, dtype=np.int64)
        idx = np.asarray(idx, dtype=np.int64)
        if spans.size == 0:
            return cls(spans.astype(np.int32), spans.astype(np.uint8),
                       spans.astype(np.uint64), 0)
        _check(heap, spans, idx)
        key = spans * 16 + (idx >> 6)
        order = np.argsort(key, kind="stable")
        key = key[order]
        vals = np.uint64(1) << (idx[order] & 63).astype(np.uint64)
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        u = key[starts]
        return cls((u >> 4).astype(np.int32), (u & 15).astype(np.uint8),
                   np.bitwise_or.reduceat(vals, starts), int(heap.elem_sizes(spans).sum()))

    def apply(self, heap: Heap) -> None:
        """Set the plan's bits in its spans' mark buffers (whichever buffer that is now).
        BadSpanState if a span is no longer in use."""
        if self.spans.size == 0:
            return
        sp = self.spans.astype(np.int64)
        if (heap.span_state[sp] != SPAN_IN_USE).any():
            s = int(sp[np.argmax(heap.span_state[sp] != SPAN_IN_USE)])
            raise BadSpanState(f"mark plan: span {s} is not in use")
        flat = ((heap.alloc_buf(sp) ^ 1) * 16 + self.words) * heap.npages + sp
        with heap.lock:  # read-modify-write of words another marker may share
            heap.bits.reshape(-1)[flat] |= self.bits


def _check(heap: Heap, spans: np.ndarray, idx: np.ndarray) -> None:
    if (heap.span_state[spans] != SPAN_IN_USE).any():
        s = int(spans[np.argmax(heap.span_state[spans] != SPAN_IN_USE)])
        raise BadSpanState(f"mark_objects: span {s} is not in use")
    bad = (idx < 0) | (idx >= heap.span_nelems[spans])
    if bad.any():
        i = int(np.argmax(bad))
        raise BadObjectIndex(f"mark_objects: object {idx[i]} of span {spans[i]}")


def mark_whole_spans(heap: Heap, spans: np.ndarray) -> None:
    """Mark every slot ``[0, nelems)`` of ``spans``: spans that one owner filled completely
    and whose objects all live (a mutator's :class:`~sweeperd.workload.mutator.WholeSpans`).
    O(spans), not O(objects): each span's mark words are stored whole.  No lock: no other
    marker has an object in such a span, and a word never holds two spans' bits.  Raises
    :class:`BadSpanState` if a span is not in use or not full — marking it whole would mark
    free slots."""
    spans = np.asarray(spans, dtype=np.int64)
    if spans.size == 0:
        return
    cls = heap.span_class[spans]
    bad = ((heap.span_state[spans] != SPAN_IN_USE) | (cls == 0)
           | (heap.span_alloc_count[spans] != heap.span_nelems[spans]))
    if bad.any():
        s = int(spans[np.argmax(bad)])
        raise BadSpanState(f"mark_whole_spans: span {s} is not a full small span in use "
                           f"(state {heap.span_state[s]}, class {heap.span_class[s]}, "
                           f"allocCount {heap.span_alloc_count[s]} of {heap.span_nelems[s]})")
    for c in np.unique(cls).tolist():
        cols = spans[cls == c]
        nw = int(CLASS_NWORDS[c])
        full = np.zeros(nw * 64, dtype=np.uint8)
        full[: int(heap.span_nelems[cols[0]])] = 1
        words = np.packbits(full, bitorder="little").view(np.uint64)
        for buf, cb in heap.by_alloc_buf(cols):
            heap.bits[buf ^ 1, :nw][:, cb] = words[:, None]


def mark_spans_fully(heap: Heap, spans: np.ndarray) -> None:
    """Mark every allocated object of ``spans`` live (a copy of alloc bits into mark bits)."""
    spans = np.asarray(spans, dtype=np.int64)
    for k in np.unique(CLASS_NWORDS[heap.span_class[spans]]):
        k = int(k)
        cols = spans[CLASS_NWORDS[heap.span_class[spans]] == k]
        for buf, c in heap.by_alloc_buf(cols):
            mv = heap.bits[buf ^ 1, :k]
            mv[:, c] = heap.bits[buf, :k][:, c]
