"""A sweeper worker process for tests: attach, wait for the go signal, sweep until no pages
are left, report.  With ``die_at``, it kills itself with SIGKILL at that fault point of its
second batch (a real ``kill -9`` at a chosen instruction boundary)."""

from __future__ import annotations

import json
import os
import signal

from sweeperd.runtime import owners
from sweeperd.runtime.bgsweep import sweep_until_done
from sweeperd.runtime.heap import Heap, HeapHandle


def sweeper(handle_json, me, go, q, die_at=None, chunk_pages=128):
    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    heap.me = owners.sweeper(me)  # its row of the counters and tallies, as in the daemon
    seen = {"n": 0}

    def fault(point):
        if point == die_at:
            seen["n"] += 1
            if seen["n"] == 2:  # die in the middle of its second batch
                os.kill(os.getpid(), signal.SIGKILL)

    try:
        go.wait(30)
        st = sweep_until_done(heap, me, chunk_pages=chunk_pages,
                              fault=fault if die_at else None)
        q.put((me, st.spans, st.objects_freed))
    finally:
        heap.close()


def spinning_sweeper(handle_json, me, ready, q, chunk_pages=16):
    """Attach, say ready, then spin (no sleep, no event wake-up) until the test writes
    ``H_BENCH_GO``: every sweeper leaves the same spin at the same store."""
    from sweeperd.runtime.heap import H_BENCH_GO

    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    try:
        with ready.get_lock():
            ready.value += 1
        while heap.header[H_BENCH_GO] == 0:
            pass
        st = sweep_until_done(heap, me, chunk_pages=chunk_pages)
        q.put((me, st.spans, st.objects_freed))
    finally:
        heap.close()
