"""Sweeper worker processes racing each other and an allocating mutator for unswept spans:
every span in use when the cycle began is swept exactly once, and no object is lost."""

import json
import time

import multiprocess as mp
import numpy as np

from sweeperd.runtime import mcentral, shards
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import H_BENCH_GO, Heap
from sweeperd.sys.procs import reap

from .heapgen import build
from .sweeperproc import spinning_sweeper, sweeper

CTX = mp.get_context("spawn")


def test_two_sweepers_and_a_mutator_sweep_each_span_exactly_once():
    rng = np.random.default_rng(7)
    with Heap.create(32 << 20) as heap:
        for _cycle in range(3):
            build(heap, rng, 400, p_fin=0.0)  # fresh spans, marks, sweepgen += 2
            nsweeps0 = heap.span_nsweeps.copy()
            spans0 = heap.in_use_spans()
            alloc0 = int(heap.span_alloc_count[spans0].sum())
            shards.assign(heap, 2)
            go, q = CTX.Event(), CTX.Queue()
            hj = json.dumps(heap.handle.to_dict())
            ps = [CTX.Process(target=sweeper, args=(hj, i, go, q, None, 64)) for i in range(2)]
            for p in ps:
                p.start()
            try:
                go.set()
                # the mutator races them: on-demand sweeps through mcentral.cacheSpan
                mut_spans = mut_freed = 0
                cached = []
                for c in (6, 20, 5, 45, 6, 20):
                    s, _, work = mcentral.cache_span(heap, c)
                    cached.append(s)
                    mut_spans += work.spans
                    mut_freed += work.objects_freed
                res = [q.get(timeout=60) for _ in ps]
            finally:
                reap(ps)
                q.close()
            assert all(p.exitcode == 0 for p in ps)
            for s in cached:
                mcentral.uncache_span(heap, s)
            assert shards.unswept(heap).size == 0 and shards.unfinished(heap).size == 0
            d = heap.span_nsweeps[spans0].astype(np.int64) - nsweeps0[spans0]
            assert (d == 1).all(), f"spans swept {np.unique(d)} times"
            assert sum(r[1] for r in res) + mut_spans == spans0.size
            # conservation: allocated before = still allocated in those spans + freed (the
            # mutator allocated nothing; a span it grew into a freed page holds 0 objects)
            freed = sum(r[2] for r in res) + mut_freed
            live = spans0[heap.span_state[spans0] != 0]
            assert alloc0 - freed == int(heap.span_alloc_count[live].sum())
            check_heap(heap)


def test_sweepers_released_from_one_spin_each_sweep_their_share():
    """Three sweeper processes spin on one shared word; one store releases them all.  Each
    one swept spans (none sat idle while the others did the work), and together they swept
    every span exactly once."""
    rng = np.random.default_rng(3)
    with Heap.create(64 << 20) as heap:
        build(heap, rng, 3000, p_fin=0.0)
        nsweeps0 = heap.span_nsweeps.copy()
        spans0 = heap.in_use_spans()
        shards.assign(heap, 3)
        ready, q = CTX.Value("i", 0), CTX.Queue()
        hj = json.dumps(heap.handle.to_dict())
        ps = [CTX.Process(target=spinning_sweeper, args=(hj, i, ready, q)) for i in range(3)]
        for p in ps:
            p.start()
        try:
            deadline = time.monotonic() + 60
            while ready.value < 3:
                assert time.monotonic() < deadline, "the sweepers never got ready"
                time.sleep(0.01)
            heap.header[H_BENCH_GO] = 1  # go, for all three at once
            res = sorted(q.get(timeout=60) for _ in ps)
        finally:
            reap(ps)
            q.close()
        assert all(p.exitcode == 0 for p in ps)
        assert [r[0] for r in res] == [0, 1, 2]
        assert all(r[1] > 0 for r in res), f"spans swept per sweeper: {[r[1] for r in res]}"
        assert sum(r[1] for r in res) == spans0.size
        d = heap.span_nsweeps[spans0].astype(np.int64) - nsweeps0[spans0]
        assert (d == 1).all()
