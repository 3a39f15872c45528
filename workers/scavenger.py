"""Scavenger process: returns free pages to the kernel, paced, while the heap is in use.

:class:`Scavenger` is the loop body over injectable time (``clock``) and memory truth
(``backed`` — the kernel's count of the arena's blocks): each wake releases in quanta from the
highest free pages down until it has worked ``min_work`` or the heap's backing is within the
retain goal, and the :class:`~sweeperd.scavpace.Pacer` says how long to sleep.  The quantum
adapts so that one quantum takes about ``min_work`` (vectorized runs make a quantum of many MiB
cheap; Go's fixed 64 KiB quantum would be syscall-bound here).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sweeperd import scavenge
from sweeperd.heap import H_HEAP_GOAL, H_MEMORY_LIMIT, Heap, HeapHandle
from sweeperd.scavenge import Released
from sweeperd.scavpace import Pacer, pages_to_release, retain_goal
from sweeperd.sysmem import SysMem, calibrate_vectored


@dataclass
class Scavenger:
    heap: Heap
    sysmem: SysMem
    pacer: Pacer
    clock: Callable[[], float] = time.perf_counter
    backed: Callable[[], int] | None = None
    quantum: int = 8  # pages: 64 KiB, Go's scavengeQuantum, to start
    released: Released = field(default_factory=Released)

    def goal(self) -> int:
        return retain_goal(int(self.heap.header[H_HEAP_GOAL]),
                           int(self.heap.header[H_MEMORY_LIMIT]))

    def backed_bytes(self) -> int:
        return self.backed() if self.backed else self.heap.arena_backed_bytes()

    def need(self) -> int:
        return pages_to_release(self.backed_bytes(), self.goal())

    def wake(self) -> tuple[int, float]:
        """One wake's work: returns (pages released, seconds worked)."""
        t0 = self.clock()
        pages = 0
        need = self.need()
        while need > 0:
            t = self.clock()
            r = scavenge.scavenge(self.heap, self.sysmem, min(need, self.quantum))
            dt = self.clock() - t
            if r.pages == 0:
                break  # nothing free and backed is left: the rest is fragmentation
            pages += r.pages
            self._count(r)
            if dt > 0:  # aim at ~min_work per quantum: one release per wake when warmed up
                self.quantum = max(8, int(r.pages / dt * self.pacer.min_work))
            if self.clock() - t0 >= self.pacer.min_work:
                break
            need -= r.pages
        return pages, self.clock() - t0

    def release_all(self) -> int:
        """Go's debug.FreeOSMemory: every free backed page, now, unpaced."""
        r = scavenge.scavenge(self.heap, self.sysmem, self.heap.npages)
        self._count(r)
        return r.pages

    def _count(self, r: Released) -> None:
        self.released.pages += r.pages
        self.released.runs += r.runs
        self.released.kernel_bytes += r.kernel_bytes


def main(handle: dict[str, Any], endpoint: str, fraction: float, ncpu: int,
         vectored: str, heartbeat_ms: int) -> None:
    """Daemon shell: wake, work, sleep as paced; release everything on ``release_all``."""
    from .link import Link
    from .tuning import keep_malloc_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_malloc_memory()
    if vectored == "auto":  # measure both ways here, keep the faster
        rates = calibrate_vectored()
        use_vectored = rates["vectored"] > rates["per_run"]
    else:
        use_vectored = vectored == "on"
    heap = Heap.attach(HeapHandle.from_dict(handle))
    sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True,
                vectored=use_vectored)
    sc = Scavenger(heap, sm, Pacer(fraction=fraction, ncpu=ncpu))
    link = Link(endpoint, "scavenger", 0)
    cpu0 = time.process_time()
    last_hb = 0.0
    try:
        while not link.orphaned():
            pages, worked = sc.wake()
            sleep = sc.pacer.sleep_for(worked) if pages else heartbeat_ms / 1000
            t = time.perf_counter()
            msg = link.recv(int(min(sleep, heartbeat_ms / 1000) * 1000))
            if pages:
                sc.pacer.observe(worked, time.perf_counter() - t)
            if msg is not None:
                if msg.type == "stop":
                    break
                if msg.type == "release_all":
                    sc.release_all()
            now = time.monotonic()
            if msg is not None or now - last_hb >= heartbeat_ms / 1000:
                link.send("heartbeat", stats={
                    "released_pages": sc.released.pages, "release_runs": sc.released.runs,
                    "released_kernel_bytes": sc.released.kernel_bytes,
                    "cpu_seconds": time.process_time() - cpu0,
                    **{f"madvise_{k}": v for k, v in sm.calls.items()},
                    "sleep_ratio": sc.pacer.sleep_ratio, "vectored": int(use_vectored)})
                last_hb = now
    finally:
        link.close()
        heap.close()
