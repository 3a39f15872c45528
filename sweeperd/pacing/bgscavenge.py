"""The background scavenger's wake (Go's bgscavenge / scavengerState.run), time passed in.

:class:`Scavenger` is the scavenger process's loop body over injectable time (``clock``) and
memory truth (``backed`` — the kernel's count of the arena's blocks): each wake asks its policy
(``sweeperd.pacing.policy``; Go's by default) what to release, releases it in quanta from the
highest free pages down, and asks again, until the policy wants nothing or the wake's time is
up. For the paced policy (Go's) the :class:`~sweeperd.pacing.scavpace.Pacer` says how long to
sleep; the others say when they want to be asked again. The quantum adapts so that one quantum
takes about ``wake_work`` (vectorized runs make a quantum of many MiB cheap; Go's fixed 64 KiB
quantum would be syscall-bound here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sweeperd.pacing.policy import GoPolicy, Policy, View
from sweeperd.pacing.scavpace import Pacer, retain_goal
from sweeperd.runtime import scavenge
from sweeperd.runtime.heap import (
    C_IN_USE_PAGES,
    C_SCAVENGED_PAGES,
    H_HEAP_GOAL,
    H_MEMORY_LIMIT,
    T_BYTES_ALLOCATED,
    T_FREED_PAGES,
    Heap,
)
from sweeperd.runtime.scavenge import Released
from sweeperd.sys.sysmem import SysMem

MAX_WAKE_S = 0.02  # an unpaced policy's wake works at most this long, then the loop listens


@dataclass
class Scavenger:
    heap: Heap
    sysmem: SysMem
    pacer: Pacer
    clock: Callable[[], float] = time.perf_counter
    backed: Callable[[], int] | None = None
    quantum: int = 8  # pages: 64 KiB, Go's scavengeQuantum, to start
    released: Released = field(default_factory=Released)
    policy: Policy = field(default_factory=GoPolicy)
    more: bool = False  # the last wake stopped on time with work left
    next_sleep: float = 0.0  # an unpaced policy's wait, from its last plan

    def goal(self) -> int:
        return retain_goal(int(self.heap.header[H_HEAP_GOAL]),
                           int(self.heap.header[H_MEMORY_LIMIT]))

    def backed_bytes(self) -> int:
        return self.backed() if self.backed else self.heap.arena_backed_bytes()

    def view(self) -> View:
        h = self.heap
        c = h.counter_totals()
        in_use = int(c[C_IN_USE_PAGES])
        return View(now=self.clock(), backed_bytes=self.backed_bytes(),
                    heap_goal=int(h.header[H_HEAP_GOAL]),
                    memory_limit=int(h.header[H_MEMORY_LIMIT]),
                    dirty_pages=h.npages - in_use - int(c[C_SCAVENGED_PAGES]),
                    freed_pages=int(h.tallies[:, T_FREED_PAGES].sum()), npages=h.npages,
                    sweepgen=h.sweepgen, in_use_pages=in_use,
                    allocated_bytes=int(h.tallies[:, T_BYTES_ALLOCATED].sum()))

    def wake(self) -> tuple[int, float]:
        """One wake's work: returns (pages released, seconds worked).  It asks the policy,
        releases what it says (in quanta), tells it, and asks again, until the policy wants
        nothing or the wake's time is up (the pacer's ``wake_work`` when paced, else
        ``MAX_WAKE_S``)."""
        t0 = self.clock()
        budget = self.pacer.wake_work if self.policy.paced else MAX_WAKE_S
        pages = 0
        self.more = False
        while True:
            v = self.view()
            plan = self.policy.plan(v, self.heap)
            self.next_sleep = plan.sleep_s  # (the plan itself may hold views of the heap)
            if plan.pages <= 0:
                break
            step = plan.pages if plan.whole_runs else min(plan.pages, self.quantum)
            t = self.clock()
            r = scavenge.scavenge(self.heap, self.sysmem, step, plan.allow, plan.whole_runs)
            dt = self.clock() - t
            self.policy.released(r.pages, v)
            if r.pages == 0:
                break  # nothing free and backed is left that it may take
            pages += r.pages
            self._count(r)
            if dt > 0:  # aim at ~wake_work per quantum: one release per wake when warmed up
                self.quantum = max(8, int(r.pages / dt * self.pacer.wake_work))
            if self.clock() - t0 >= budget:
                self.more = True
                break
        return pages, self.clock() - t0

    def sleep_for(self, pages: int, worked: float, idle_s: float) -> float:
        """How long to wait after a wake: the pacer's sleep for a paced policy that worked,
        nothing if the wake stopped on time with work left, else the policy's own wait (at
        most ``idle_s``)."""
        if self.policy.paced:
            return self.pacer.sleep_for(worked) if pages else idle_s
        if self.more:
            return 0.0
        return min(self.next_sleep, idle_s)

    def release_all(self) -> int:
        """Go's debug.FreeOSMemory: every free backed page, now, unpaced (under any policy:
        it is the operator's request)."""
        r = scavenge.scavenge(self.heap, self.sysmem, self.heap.npages)
        self._count(r)
        return r.pages

    def _count(self, r: Released) -> None:
        self.released.pages += r.pages
        self.released.runs += r.runs
        self.released.kernel_bytes += r.kernel_bytes
