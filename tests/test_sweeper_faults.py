"""kill -9 of a sweeper worker at each point of its sweep: the heap lock is released by the
kernel, the survivors and the recovery finish the cycle, and every span is swept exactly once."""

import json
import signal

import multiprocess as mp
import numpy as np
import pytest

from sweeperd.runtime import recovery, shards
from sweeperd.runtime.bgsweep import sweep_until_done
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import SWEEP_BATCH, T_OBJECTS_FREED, T_SWEPT_SPANS, Heap
from sweeperd.sys.procs import reap

from .heapgen import build
from .sweeperproc import sweeper

CTX = mp.get_context("spawn")


@pytest.mark.parametrize("die_at", ["claimed", "checked", "committing", "committed",
                                    "published", "freeing"])
def test_kill_9_mid_sweep_cycle_completes_exactly_once(die_at):
    rng = np.random.default_rng(11)
    with Heap.create(32 << 20) as heap:
        build(heap, rng, 600)
        before = heap.snapshot()
        nsweeps0 = heap.span_nsweeps.copy()
        spans0 = heap.in_use_spans()
        alloc0 = int(heap.span_alloc_count[spans0].sum())
        shards.assign(heap, 2)
        go, q = CTX.Event(), CTX.Queue()
        hj = json.dumps(heap.handle.to_dict())
        ps = [CTX.Process(target=sweeper, args=(hj, i, go, q, die_at if i == 0 else None))
              for i in range(2)]
        try:
            # the victim runs first so that it surely reaches its second batch; the survivor
            # then has to take over its shard and the heap lock it may have died holding
            ps[0].start()
            go.set()
            ps[0].join(timeout=60)
            assert ps[0].exitcode == -signal.SIGKILL  # the victim really died by SIGKILL
            ps[1].start()
            res = [q.get(timeout=60)]
            ps[1].join(timeout=60)
        finally:
            reap(ps)
            q.close()
        assert ps[1].exitcode == 0
        # the coordinator's part: recover what the dead worker had claimed, then a
        # replacement worker takes whatever pages are left
        rec = recovery.claims(heap, 0)
        left = sweep_until_done(heap, 0)
        assert shards.unswept(heap).size == 0 and shards.unfinished(heap).size == 0
        d = heap.span_nsweeps[spans0].astype(np.int64) - nsweeps0[spans0]
        assert (d == 1).all(), f"{die_at}: spans swept {np.unique(d).tolist()} times"
        check_heap(heap)
        # no object lost: what was allocated is still allocated or was freed — counted from
        # the bitmaps, since the dead worker's own counts died with it
        live = spans0[heap.span_state[spans0] != 0]
        assert int(heap.span_alloc_count[live].sum()) <= alloc0
        marked = before["bits"][1 - int((heap.sweepgen - 2) >> 1 & 1)][:, spans0]
        fin = before["fin_bits"][:, spans0]
        expect = int(np.bitwise_count(marked | fin).sum())
        assert int(heap.span_alloc_count[live].sum()) == expect
        assert res[0][1] + rec.spans + left.spans <= spans0.size
        # and the tallies (the dead worker's row kept, its flagged batch applied by the
        # recovery) counted every span's sweep once and every freed object once
        t = heap.tallies.astype(np.int64) - before["tallies"]
        assert int(t[:, T_SWEPT_SPANS].sum()) == spans0.size, die_at
        assert int(t[:, T_OBJECTS_FREED].sum()) == alloc0 - expect, die_at
        assert not heap.tallies[:, SWEEP_BATCH[2]].any()  # no batch left in flight


def test_death_between_claiming_a_chunk_and_its_spans_is_recovered():
    """Claims are made outside the lock: a worker that took a chunk and died before claiming
    its spans leaves them at h-2, in pages nobody else may take; recovery sweeps them."""
    rng = np.random.default_rng(5)
    with Heap.create(8 << 20) as heap:
        build(heap, rng, 200, p_fin=0.0)
        spans0 = heap.in_use_spans()
        before = heap.span_nsweeps[spans0].copy()
        shards.assign(heap, 2)
        with heap.lock:
            took = shards._take(heap, 0, 256)  # worker 0 took a chunk ... and died
        assert took == (0, 256) and spans0[0] < 256
        with heap.lock:
            assert not shards.open_for_claim(heap, int(spans0[0]))  # mutators keep off it
        recovery.claims(heap, 0)
        sweep_until_done(heap, 1)  # the survivor takes the rest, stealing worker 0's shard
        assert shards.unswept(heap).size == 0 and shards.unfinished(heap).size == 0
        assert (heap.span_nsweeps[spans0] - before == 1).all()
        check_heap(heap)
