"""A sweeper worker process for tests: attach, wait for the go signal, sweep until no pages
are left, report.  With ``die_at``, it kills itself with SIGKILL at that fault point of its
second batch (a real ``kill -9`` at a chosen instruction boundary)."""

from __future__ import annotations

import json
import os
import signal

from sweeperd.runtime.bgsweep import sweep_until_done
from sweeperd.runtime.heap import Heap, HeapHandle


def sweeper(handle_json, me, go, q, die_at=None, chunk_pages=128):
    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
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
