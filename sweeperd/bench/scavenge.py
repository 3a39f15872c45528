"""The scavenger benchmark: release throughput and CPU against one kernel call over the same
memory, and time to the retain goal under a policy.

Every figure is measured in the same run: the kernel's floor is one ``MADV_REMOVE`` over as
many freshly touched bytes of the same arena as were released, timed in wall-clock and in CPU
(``cpu_ratio_to_kernel`` = the scavenger's CPU per GiB released over the kernel's).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from sweeperd.bench.common import fill_heap, mark_prefix
from sweeperd.pacing import policies
from sweeperd.pacing.bgscavenge import Scavenger
from sweeperd.pacing.scavpace import Pacer
from sweeperd.runtime.heap import H_HEAP_GOAL, H_SWEEPGEN, SPAN_DEAD, Heap
from sweeperd.runtime.heapstats import marked_bytes
from sweeperd.runtime.scavenge import ReleaseOnFree
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.runtime.sweepgen import try_claim
from sweeperd.sys.sysmem import MADV, Kernel, SysMem

GIB = 1 << 30
QUIET_S = 1.0
KERNEL_REPEAT = 5  # an unpaced policy that released nothing this long, with nothing due, is done


def _kernel_one_call(heap: Heap, nbytes: int, repeat: int = KERNEL_REPEAT) -> tuple[float,
                                                                                    float]:
    """(bytes/s, CPU seconds) of one MADV_REMOVE over ``nbytes`` of the same arena, freshly
    touched: the median of ``repeat`` calls (one call's cost varies by ±25% on this VM)."""
    k = Kernel()
    rates, cpus = [], []
    for _ in range(repeat):
        heap.arena[:nbytes] = 0x5A
        c = time.process_time()
        t = time.perf_counter()
        k.madvise(heap.arena.ctypes.data, nbytes, MADV["REMOVE"])
        rates.append(nbytes / (time.perf_counter() - t))
        cpus.append(time.process_time() - c)
    return float(np.median(rates)), float(np.median(cpus))


def _run_policy(sc: Scavenger, heap: Heap, goal: int, timeout_s: float) -> None:
    """The scavenger's loop (as the process runs it, sleeps real) until the policy is done:
    Go's at the retain goal; the others when every freed page is released or they stay quiet
    (``QUIET_S``) with nothing planned."""
    t0 = last = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        pages, worked = sc.wake()
        now = time.perf_counter()
        if pages:
            last = now
        if sc.policy.paced:
            if heap.arena_backed_bytes() <= goal or pages == 0:
                return
        elif sc.view().dirty_pages == 0 or (now - last > QUIET_S and not sc.more):
            return
        slept = sc.sleep_for(pages, worked, 0.2)
        time.sleep(slept)
        if pages and sc.policy.paced:
            sc.pacer.observe(worked, slept)


def bench_scavenge(heap_mib: int, live: float, fraction: float, vectored: bool,
                   timeout_s: float = 120.0, policy: str = "go",
                   repeat: int = 1) -> dict[str, Any]:
    """:func:`scavenge_once` ``repeat`` times: the run of median ``cpu_ratio_to_kernel`` (a
    shared VM's kernel cost varies by ±25% from one call to the next), with every run's
    ratio and seconds beside it."""
    if not 1 <= repeat <= 100:
        raise ValueError("--repeat must be within 1..100")
    runs = [scavenge_once(heap_mib, live, fraction, vectored, timeout_s, policy)
            for _ in range(repeat)]
    if repeat == 1:
        return runs[0]
    key = [r.get("cpu_ratio_to_kernel") or 0.0 for r in runs]
    out = dict(runs[int(np.argsort(key)[len(key) // 2])])
    out["repeat"] = repeat
    out["cpu_ratio_to_kernel_all"] = key
    out["seconds_all"] = [r["seconds"] for r in runs]
    return out


def scavenge_once(heap_mib: int, live: float, fraction: float, vectored: bool,
                  timeout_s: float = 120.0, policy: str = "go") -> dict[str, Any]:
    """Fill a heap of 64 B objects, free all (or all but the first ``live`` fraction), then
    release.  With ``live == 0`` and Go's policy the release is one unpaced pass
    (FreeOSMemory).  Otherwise ``policy`` is in charge, as in the daemon (Go's: retain goal
    from GOGC 100, ``fraction`` of the CPU): the time it took, and the CPU it spent."""
    if heap_mib <= 0 or not 0 <= live < 1 or not 0 < fraction <= 1:
        raise ValueError("--heap-mib must be positive, --live within [0, 1), "
                         "--cpu-fraction within (0, 1]")
    if policy not in policies.POLICIES:
        raise ValueError(f"--policy {policy!r} is not one of {', '.join(policies.POLICIES)}")
    with Heap.create(heap_mib << 20) as heap:
        spans = fill_heap(heap, 6, heap.npages)
        mark_prefix(heap, spans, live)
        live_bytes = marked_bytes(heap)
        heap.header[H_HEAP_GOAL] = max(2 * live_bytes, 4 << 20)  # GOGC=100
        sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True,
                    vectored=vectored)
        sc = Scavenger(heap, sm, Pacer(fraction=fraction, ncpu=os.cpu_count() or 1),
                       policy=policies.make(policy))
        sc.policy.plan(sc.view(), heap)  # its first look comes before the frees, as in a daemon
        heap.header[H_SWEEPGEN] += 2
        sweep_batch(heap, try_claim(heap.span_sweepgen, spans, heap.sweepgen))
        backed0 = heap.arena_backed_bytes()
        out: dict[str, Any] = {"bench": "scavenge", "policy": policy,
                               "heap_bytes": heap.heap_bytes, "live_fraction": live,
                               "advice": sm.advice_name}
        goal = sc.goal()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if policies.releases_on_free(policy):  # what the freers would have done, timed alone
            freed = spans[heap.span_state[spans] == SPAN_DEAD]
            ReleaseOnFree(heap, sm)(freed, heap.span_npages[freed].astype(np.int64))
        elif live == 0 and policy == "go":
            sc.release_all()
        else:
            _run_policy(sc, heap, goal, timeout_s)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        released = backed0 - heap.arena_backed_bytes()
        out.update({
            "released_bytes": released, "released_bytes_books": sc.released.bytes,
            "released_bytes_reported": sc.released.kernel_bytes,
            "seconds": dt, "bytes_per_s": released / dt if dt > 0 else 0.0,
            "madvise_calls": sum(sm.calls.values()), "madvise_calls_by_advice": sm.calls,
            "runs": sc.released.runs,
            "syscalls_per_mib": sum(sm.calls.values()) / max(released / (1 << 20), 1e-9),
            "cpu_seconds": cpu, "backed_bytes_after": heap.arena_backed_bytes(),
            "retain_goal_bytes": goal,
        })
        if released > 0:
            kernel_rate, kernel_cpu = _kernel_one_call(heap, released)
            out["kernel_one_call_bytes_per_s"] = kernel_rate
            out["ratio_to_kernel"] = out["bytes_per_s"] / kernel_rate
            out["cpu_seconds_per_gib"] = cpu / (released / GIB)
            out["kernel_cpu_seconds_per_gib"] = kernel_cpu / (released / GIB)
            out["cpu_ratio_to_kernel"] = cpu / kernel_cpu if kernel_cpu > 0 else None
        if live > 0 and policy == "go":
            reached = heap.arena_backed_bytes() <= goal
            out["cpu_fraction_target"] = fraction
            out["seconds_to_retain_goal"] = dt if reached else None
    return out
