"""Sweeper worker process: sweep the cycle's shards each time the coordinator says so.

The work itself is :func:`sweeperd.runtime.bgsweep.sweep_until_done`; this module holds only
the process loops (the daemon's, and the benchmark's).  A worker keeps no state the others
need: if it is killed, ``sweeperd.runtime.recovery`` finishes what it held.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

from sweeperd.roles import Role
from sweeperd.runtime import owners
from sweeperd.runtime.bgsweep import sweep_until_done
from sweeperd.runtime.heap import H_BENCH_GO, H_BENCH_READY, Heap, HeapHandle
from sweeperd.runtime.scavenge import ReleaseOnFree
from sweeperd.sys.tuning import prepare_worker_memory, release_free_heap
from sweeperd.wire.beat import Beat
from sweeperd.wire.link import Link
from sweeperd.wire.protocol import HeartbeatMsg, StopMsg, SweeperStats, SweepMsg, SweptMsg


def bench_main(handle: dict[str, Any], me: int, results: Any, rounds: int,
               chunk_pages: int) -> None:
    """Benchmark shell: one sweep per round.  Round r starts when the driver sets the heap
    header's H_BENCH_GO to r.  Workers sleep-poll until H_BENCH_READY reaches r (the heap is
    filled), then spin on H_BENCH_GO, so they start within ~0.05 ms of each other: a barrier's
    or a sleeping poll's wake-up skew was 0.5–3 ms on this VM, as long as the sweep itself."""
    prepare_worker_memory()
    heap = Heap.attach(HeapHandle.from_dict(handle))
    heap.me = owners.sweeper(me)
    try:
        for r in range(1, rounds + 1):
            while heap.header[H_BENCH_READY] < r:
                time.sleep(200e-6)
            while heap.header[H_BENCH_GO] < r:
                pass  # spin: the driver only sleeps until it says go
            t0 = time.perf_counter()
            st = sweep_until_done(heap, me, chunk_pages)
            t1 = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
            results.put({"worker": me, "t0": t0, "t1": t1, "spans": st.spans,
                         "pages": st.pages, "objects_freed": st.objects_freed,
                         "spans_freed": st.spans_freed, "bitmap_bytes": st.bitmap_bytes})
    finally:
        heap.close()


def main(handle: dict[str, Any], me: int, endpoint: str, chunk_pages: int,
         heartbeat_ms: int, release_on_free: bool = False) -> None:
    """Daemon shell: sweep the current cycle's shards each time the coordinator says
    ``sweep``; report ``swept`` with the sweep's time (what it swept is in its row of the
    heap's tallies); heartbeat while idle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator drains us with "stop"
    prepare_worker_memory()
    heap = Heap.attach(HeapHandle.from_dict(handle))
    link = Link(endpoint, Role.SWEEPER, me)
    heap.me = owners.sweeper(me)  # its row of the heap's running counters
    if release_on_free:  # the eager policy: release what it frees, at once
        ReleaseOnFree.install(heap)
    beat = Beat(heap, owners.sweeper(me), heartbeat_ms / 1000).start()
    try:
        while not link.orphaned():
            msg = link.recv(heartbeat_ms)
            if msg is None:
                link.send(HeartbeatMsg(stats=SweeperStats()))
                continue
            match msg:
                case StopMsg():
                    break
                case SweepMsg(cycle=cycle) if cycle == heap.sweepgen:
                    t0 = time.perf_counter()
                    sweep_until_done(heap, me, chunk_pages)  # its work: in its heap row
                    link.send(SweptMsg(cycle=cycle,
                                       stats=SweeperStats(seconds=time.perf_counter() - t0)))
                    release_free_heap()  # idle until the next cycle: give back what it freed
    except BaseException:
        link.crashed()
        raise
    finally:
        beat.stop()
        link.close()
        heap.close(dying=sys.exc_info()[0] is not None)  # (its exception is the news)

