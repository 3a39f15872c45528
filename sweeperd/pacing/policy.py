"""Scavenger policies: which free pages to give back to the OS, and when — one interface.

Theory of operation
-------------------
A policy is pure code: at each wake the scavenger hands it a :class:`View` (time and the
heap's figures, all O(1) reads plus the kernel's count of the arena's blocks) and the page
table (for the policies that look at pages), and it answers with a :class:`Plan`: how many
pages to release now, optionally a filter on which (``allow``, evaluated by the search under
the heap lock), whether runs stay whole, and when to be asked again.  The scavenger process
carries the plan out with the one release protocol of ``sweeperd.runtime.scavenge`` (take →
release → finish, the same kernel accounting and batching), tells the policy what it released
(:meth:`Policy.released`), and asks again until the plan is empty or the wake's time is up.
Time only enters through ``View.now``, so every policy is tested on a fake clock.

The policies (names are a contract: config, ``--policy``, the metrics' ``policy`` label):

======================= =====================================================================
``go``                  Go's scavenger: retain goal = heap goal + 10% (with a memory limit, at
                        most 95% of it); release the excess top-down, paced by the PI
                        controller to ``scavenger.cpu_fraction``.  ``GoParams.version``: "1.19"
                        as before, or "1.21" (the default, every Go since): the background
                        search skips dense chunks (``density.py``), and allocation scavenges
                        what the heap is over the memory limit (``scavenge.ScavengeAssist``).
``jemalloc-decay``      jemalloc's decay (decay.c): ``decay.py``.
``gperftools-rate``     gperftools' release rate (page_heap.cc): ``releaserate.py``.
``mimalloc-delay``      mimalloc's purge delay: ``purgedelay.py``.
``eager``               release when freed, by whoever frees (``scavenge.ReleaseOnFree`` installed
                        as ``heap.on_free`` in every process that frees); the scavenger idles.
                        ``jemalloc-decay`` with ``dirty_decay_ms = 0`` and ``mimalloc-delay`` with
                        ``purge_delay_ms = 0`` do the same (``policies.releases_on_free``).
``none``                never release: the baseline every comparison needs.
``hugepage-aware``      Temeraire's idea on Go's goal: ``hugepage.py``.
``jemalloc-hpa``        jemalloc 5.3's hugepage allocator: dirty pages capped at a ratio of
                        active ones, purged at most every interval: ``hpa.py``.
``tcmalloc-background`` TCMalloc's background release at a constant rate in bytes per
                        second, whole free huge pages first, then subrelease: ``tcbackground.py``.
======================= =====================================================================

``release_all`` (Go's ``debug.FreeOSMemory``, the ``scavenge`` command) is an operator's
request, not a policy's decision: it releases every free backed page under every policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sweeperd.pacing.density import Index, allow_mask
from sweeperd.pacing.scavpace import pages_to_release, retain_goal

# allow(lo, hi) -> mask of hi - lo booleans: may the candidates of pages [lo, hi) go?
Allow = Callable[[int, int], np.ndarray]
IDLE_S = 0.2  # a policy with nothing to do is asked again this often


@dataclass(frozen=True)
class View:
    """What a policy sees at a wake."""

    now: float  # seconds, the scavenger's monotonic clock
    backed_bytes: int  # the kernel's blocks of the arena: the heap's true backing
    heap_goal: int  # the GC's heap goal (bytes)
    memory_limit: int  # bytes, 0 = none
    dirty_pages: int  # free pages not released since they were last used (the books)
    freed_pages: int  # pages ever returned to the page heap (freeSpan), a running total
    npages: int  # the heap's size in pages
    sweepgen: int = 0  # the heap's sweepgen: moves by 2 at each mark termination (Go's nextGen)
    in_use_pages: int = 0  # pages of in-use spans (the running counters): jemalloc's "active"
    allocated_bytes: int = 0  # bytes of objects ever allocated (T_BYTES_ALLOCATED), a running
    # total: with ``freed_pages``, the signal that the allocator is being used (activity.py)


@dataclass(frozen=True)
class Plan:
    pages: int  # release up to this many pages now (0: nothing)
    allow: Allow | None = None  # a further filter on which pages
    whole_runs: bool = False  # a run is released whole even past ``pages``
    sleep_s: float = IDLE_S  # when not paced: ask again after this long


class PageTable(Protocol):
    """The page heap's arrays a policy may read (a ``Heap`` is one)."""

    npages: int
    page_span: np.ndarray  # -1: free
    scavenged: np.ndarray  # 1: released since last used


class Policy(Protocol):
    name: str
    paced: bool  # the CPU-budget pacer spaces the wakes (Go's policy)

    def plan(self, v: View, pages: PageTable) -> Plan: ...

    def released(self, pages: int, v: View) -> None: ...

    def figures(self) -> dict[str, float]: ...


GO_VERSIONS = ("1.19", "1.21")  # [scavenger.go] version: the Go whose scavenger is modelled


@dataclass(frozen=True)
class GoParams:
    version: str = "1.21"  # "1.19" or "1.21" (the behaviour of every Go since 1.21)


class GoPolicy:
    """Go's background scavenger (mgcscavenge.go): keep the heap's backing within the retain
    goal; the pacer spends ``cpu_fraction`` doing so.  At version "1.21" the search skips
    the chunks Go 1.21's ``scavChunkData.shouldScavenge(gen, false)`` skips (dense now or at
    the last generation change: ``density.py``); at "1.19" it takes any free backed page
    (Go 1.19's ``pageAlloc.scavenge`` walks every chunk from the top)."""

    name = "go"
    paced = True

    def __init__(self, params: GoParams | None = None) -> None:
        self.params = params or GoParams()
        if self.params.version not in GO_VERSIONS:
            raise ValueError(f"go policy: version {self.params.version!r} is not one of "
                             f"{', '.join(GO_VERSIONS)}")
        self.index = Index() if self.params.version != "1.19" else None

    @property
    def version(self) -> str:
        return self.params.version

    def plan(self, v: View, pages: PageTable) -> Plan:
        need = pages_to_release(v.backed_bytes, retain_goal(v.heap_goal, v.memory_limit))
        index = self.index
        if index is None:
            return Plan(need)
        index.observe(v.sweepgen // 2, pages.page_span)
        if need == 0:
            return Plan(0)
        span = pages.page_span

        def allow(lo: int, hi: int) -> np.ndarray:
            return allow_mask(span, index.last_in_use, lo, hi)

        return Plan(need, allow=allow)

    def released(self, pages: int, v: View) -> None:
        pass

    def figures(self) -> dict[str, float]:
        return {}


class NonePolicy:
    """Never release (jemalloc's ``dirty_decay_ms: -1``, gperftools' rate 0)."""

    name = "none"
    paced = False

    def plan(self, v: View, pages: PageTable) -> Plan:
        return Plan(0)

    def released(self, pages: int, v: View) -> None:
        pass

    def figures(self) -> dict[str, float]:
        return {}


class EagerPolicy(NonePolicy):
    """Release when freed: the freers do it (``heap.on_free``), so the scavenger has nothing
    left to decide (jemalloc's ``dirty_decay_ms: 0``, mimalloc's ``purge_delay=0``)."""

    name = "eager"
