"""Sweeper worker process: claims chunks of its shard (then steals) and sweeps them.

The loop itself, :func:`sweep_until_done`, is plain code over the heap; the process shell
attaches the shared heap, installs the shared heap lock, and runs the loop when told to.  A
worker keeps no state the others need: if it is killed, its claimed-but-unfinished spans sit at
sweepgen h-1 and the coordinator has them swept with ``recover=True``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from sweeperd.heap import H_BENCH_GO, H_BENCH_READY, Heap, HeapHandle
from sweeperd.shards import claim_next, release_chunk
from sweeperd.sweep import SweepStats, sweep_batch

from .tuning import keep_malloc_memory


def sweep_until_done(heap: Heap, me: int, chunk_pages: int = 16384,
                     fault: Callable[[str], None] | None = None) -> SweepStats:
    """Sweep this worker's shard, then steal, until no unclaimed pages are left anywhere."""
    stats = SweepStats()
    while (spans := claim_next(heap, me, chunk_pages)) is not None:
        if fault:
            fault("claimed")
        if spans.size:
            stats.add(sweep_batch(heap, spans, fault=fault))
        release_chunk(heap, me)
    return stats


def bench_main(handle: dict[str, Any], me: int, results: Any, rounds: int,
               chunk_pages: int) -> None:
    """Benchmark shell: one sweep per round.  Round r starts when the driver sets the heap
    header's H_BENCH_GO to r.  Workers sleep-poll until H_BENCH_READY reaches r (the heap is
    filled), then spin on H_BENCH_GO, so they start within ~0.05 ms of each other: a barrier's
    or a sleeping poll's wake-up skew was 0.5–3 ms on this VM, as long as the sweep itself."""
    keep_malloc_memory()
    heap = Heap.attach(HeapHandle.from_dict(handle))
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
         heartbeat_ms: int) -> None:
    """Daemon shell: sweep the current cycle's shards each time the coordinator says
    ``sweep``; report ``swept`` with this cycle's figures; heartbeat while idle."""
    from .link import Link

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator drains us with "stop"
    keep_malloc_memory()
    heap = Heap.attach(HeapHandle.from_dict(handle))
    link = Link(endpoint, "sweeper", me)
    total = SweepStats()
    try:
        while not link.orphaned():
            msg = link.recv(heartbeat_ms)
            if msg is None:
                link.send("heartbeat", stats=_stats(total))
                continue
            if msg.type == "stop":
                break
            if msg.type == "sweep" and msg["cycle"] == heap.sweepgen:
                t0 = time.perf_counter()
                st = sweep_until_done(heap, me, chunk_pages)
                total.add(st)
                link.send("swept", cycle=msg["cycle"],
                          stats={**_stats(st), "seconds": time.perf_counter() - t0})
    finally:
        link.close()
        heap.close()


def _stats(st: SweepStats) -> dict[str, float]:
    return {"spans": st.spans, "pages": st.pages, "objects_freed": st.objects_freed,
            "spans_freed": st.spans_freed, "pages_freed": st.pages_freed,
            "finalizers_queued": st.finalizers_queued}
