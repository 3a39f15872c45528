"""The background scavenger's wake (Go's bgscavenge / scavengerState.run), time passed in.

:class:`Scavenger` is the scavenger process's loop body over injectable time (``clock``) and
memory truth (``backed`` — the kernel's count of the arena's blocks): each wake releases in
quanta from the highest free pages down until it has worked ``min_work`` or the heap's backing
is within the retain goal, and the :class:`~sweeperd.pacing.scavpace.Pacer` says how long to
sleep.  The quantum
adapts so that one quantum takes about ``min_work`` (vectorized runs make a quantum of many MiB
cheap; Go's fixed 64 KiB quantum would be syscall-bound here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sweeperd.pacing.scavpace import Pacer, pages_to_release, retain_goal
from sweeperd.runtime import scavenge
from sweeperd.runtime.heap import H_HEAP_GOAL, H_MEMORY_LIMIT, Heap
from sweeperd.runtime.scavenge import Released
from sweeperd.sys.sysmem import SysMem


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
