"""The scavenger benchmark: release throughput against one kernel call, and time to the
retain goal under the daemon's pacing."""

from __future__ import annotations

import os
import time
from typing import Any

from sweeperd.bench.common import fill_heap, mark_prefix
from sweeperd.pacing.bgscavenge import Scavenger
from sweeperd.pacing.scavpace import Pacer
from sweeperd.runtime.heap import H_HEAP_GOAL, H_SWEEPGEN, Heap
from sweeperd.runtime.heapstats import marked_bytes
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.runtime.sweepgen import try_claim
from sweeperd.sys.sysmem import MADV, Kernel, SysMem

GO_SECONDS_TO_RETAIN_GOAL = 8.5  # Go 1.19, 2 GiB of 64 B objects, first 10% kept, this kind


def _kernel_one_call(heap: Heap, nbytes: int) -> float:
    """Bytes/s of one MADV_REMOVE over ``nbytes`` of the same arena, freshly touched."""
    heap.arena[:nbytes] = 0x5A
    k = Kernel()
    t = time.perf_counter()
    k.madvise(heap.arena.ctypes.data, nbytes, MADV["REMOVE"])
    return nbytes / (time.perf_counter() - t)


def bench_scavenge(heap_mib: int, live: float, fraction: float, vectored: bool,
                   timeout_s: float = 120.0) -> dict[str, Any]:
    """Fill a heap of 64 B objects, free all (or all but the first ``live`` fraction), then
    release.  With ``live == 0`` the release is one unpaced pass (FreeOSMemory) compared with
    one madvise of the same advice over the same amount of the same memory.  With ``live > 0``
    the daemon's pacing is in charge (retain goal from GOGC 100, ``fraction`` of the CPU):
    the time until the heap's true backing is within the retain goal, and the CPU spent."""
    if heap_mib <= 0 or not 0 <= live < 1 or not 0 < fraction <= 1:
        raise ValueError("--heap-mib must be positive, --live within [0, 1), "
                         "--cpu-fraction within (0, 1]")
    with Heap.create(heap_mib << 20) as heap:
        spans = fill_heap(heap, 6, heap.npages)
        mark_prefix(heap, spans, live)
        live_bytes = marked_bytes(heap)
        heap.header[H_SWEEPGEN] += 2
        sweep_batch(heap, try_claim(heap.span_sweepgen, spans, heap.sweepgen))
        heap.header[H_HEAP_GOAL] = max(2 * live_bytes, 4 << 20)  # GOGC=100
        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True,
                    vectored=vectored)
        sc = Scavenger(heap, sm, Pacer(fraction=fraction, ncpu=os.cpu_count() or 1))
        backed0 = heap.arena_backed_bytes()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        out: dict[str, Any] = {"bench": "scavenge", "heap_bytes": heap.heap_bytes,
                               "live_fraction": live, "advice": sm.advice_name}
        if live == 0:
            sc.release_all()
        else:
            goal = sc.goal()
            while heap.arena_backed_bytes() > goal:
                pages, worked = sc.wake()
                if pages == 0 or time.perf_counter() - t0 > timeout_s:
                    break
                slept = sc.pacer.sleep_for(worked)
                time.sleep(slept)
                sc.pacer.observe(worked, slept)
            out["retain_goal_bytes"] = goal
            out["cpu_fraction_target"] = fraction
        dt = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        released = backed0 - heap.arena_backed_bytes()
        out.update({
            "released_bytes": released, "released_bytes_books": sc.released.bytes,
            "released_bytes_reported": sc.released.kernel_bytes,
            "seconds": dt, "bytes_per_s": released / dt,
            "madvise_calls": sum(sm.calls.values()), "madvise_calls_by_advice": sm.calls,
            "runs": sc.released.runs,
            "syscalls_per_mib": sum(sm.calls.values()) / max(released / (1 << 20), 1e-9),
            "cpu_seconds": cpu, "backed_bytes_after": heap.arena_backed_bytes(),
        })
        if live == 0:
            kernel = _kernel_one_call(heap, released)
            out["kernel_one_call_bytes_per_s"] = kernel
            out["ratio_to_kernel"] = out["bytes_per_s"] / kernel
        else:
            reached = heap.arena_backed_bytes() <= out["retain_goal_bytes"]
            out["seconds_to_retain_goal"] = dt if reached else None
            out["go_1_19_seconds_to_retain_goal"] = GO_SECONDS_TO_RETAIN_GOAL
    return out
