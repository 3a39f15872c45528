"""Processes that map the same heap: one writes payloads, the parent sweeps, another checks
that the live objects' bytes survived (checksums) and the dead ones' slots were freed."""

import hashlib
import json

import multiprocess as mp
import numpy as np

from sweeperd.runtime import mheap
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import Heap, HeapHandle
from sweeperd.runtime.sweep import sweep_batch

from .conftest import claim_all, start_cycle

CTX = mp.get_context("spawn")


def _digest(heap, spans, idx):
    from sweeperd.runtime.malloc import _object_words

    h = hashlib.sha256()
    for s, i in zip(spans.tolist(), idx.tolist(), strict=True):
        base, nw = _object_words(heap, s, np.array([i]))
        h.update(heap.arena64[int(base[0]) : int(base[0]) + nw].tobytes())
    return h.hexdigest()


def _mutator(handle_json, spans, q):
    """Child: allocate every slot of the given spans, write payloads, mark every 3rd live."""
    from sweeperd.runtime import malloc, mark

    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    try:
        ls, li = [], []
        for s in spans:
            idx = malloc.alloc_objects(heap, s, 10_000)
            malloc.write_payload(heap, s, idx, seed=1234 + s)
            keep = idx[::3]
            ls.append(np.full(keep.size, s))
            li.append(keep)
        ls_a, li_a = np.concatenate(ls), np.concatenate(li)
        mark.mark_objects(heap, ls_a, li_a)
        q.put((ls_a.tolist(), li_a.tolist(), _digest(heap, ls_a, li_a)))
    finally:
        heap.close()


def _checker(handle_json, ls, li, q):
    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    try:
        from sweeperd.runtime import malloc

        ls_a, li_a = np.array(ls), np.array(li)
        ok = all(malloc.verify_payload(heap, s, li_a[ls_a == s], seed=1234 + s).all()
                 for s in np.unique(ls_a).tolist())
        q.put((ok, _digest(heap, ls_a, li_a)))
    finally:
        heap.close()


def _run(target, args):
    q = CTX.Queue()
    p = CTX.Process(target=target, args=(*args, q))
    p.start()
    try:
        out = q.get(timeout=60)
    finally:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
            p.join()
        q.close()
    assert p.exitcode == 0
    return out


def test_payloads_survive_sweep_across_processes():
    with Heap.create(8 << 20) as heap:
        spans = [mheap.alloc_span(heap, c)[0] for c in (2, 6, 20, 45, 66)]
        spans.append(mheap.alloc_span(heap, 0, 4)[0])  # a large object too
        hj = json.dumps(heap.handle.to_dict())
        ls, li, digest_before = _run(_mutator, (hj, spans))
        assert heap.span_alloc_count[spans].sum() > len(ls)  # some objects are dead
        start_cycle(heap)
        st = sweep_batch(heap, claim_all(heap))
        assert st.objects_freed == int(heap.span_nelems[spans].sum()) - len(ls)
        check_heap(heap)
        ok, digest_after = _run(_checker, (hj, ls, li))
        assert ok and digest_after == digest_before


def _marker(handle_json, groups, parity, barrier):
    """Child: for each group of spans in turn, in step with the other marker (a barrier),
    mark every object whose index has ``parity``."""
    from sweeperd.runtime import mark

    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    try:
        for spans in groups:
            s = np.repeat(np.asarray(spans), 256)
            i = np.tile(np.arange(parity, 512, 2), len(spans))
            barrier.wait(30)
            mark.mark_objects(heap, s, i)
    finally:
        heap.close()


def test_two_mutators_marking_the_same_words_lose_no_mark():
    """Two processes mark interleaved objects (every word shared) at once, group after group
    of unmarked spans: every mark must land (an unlocked read-modify-write loses some)."""
    from sweeperd.runtime import malloc
    from sweeperd.sys.procs import reap

    with Heap.create(64 << 20) as heap:
        spans = [mheap.alloc_span(heap, 2)[0] for _ in range(4000)]  # 16 B: 512 objects
        for s in spans:
            malloc.alloc_objects(heap, s, 512)
        groups = [spans[g : g + 200] for g in range(0, len(spans), 200)]
        hj = json.dumps(heap.handle.to_dict())
        barrier = CTX.Barrier(2)
        procs = [CTX.Process(target=_marker, args=(hj, groups, p, barrier)) for p in (0, 1)]
        try:
            for p in procs:
                p.start()
        finally:
            reap(procs, timeout=60)
        assert all(p.exitcode == 0 for p in procs)
        mbuf = int(heap.alloc_buf(spans[0])) ^ 1
        lost = int((heap.bits[mbuf, :8, spans] != np.uint64(2**64 - 1)).sum())
        assert lost == 0, f"{lost} bitmap words lost a concurrent mark"
