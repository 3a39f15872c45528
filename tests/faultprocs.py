"""Worker bodies for fault tests, run in spawned processes with a fail point armed through the
environment (``sweeperd.sys.failpoint``): each dies by a real SIGKILL at that point."""

from __future__ import annotations

import json

import numpy as np

from sweeperd.runtime import owners, scavenge
from sweeperd.runtime.heap import Heap, HeapHandle
from sweeperd.sys.sysmem import SysMem
from sweeperd.workload.mutator import Mutator, Workload


def scavenger(handle_json: str, max_pages: int) -> None:
    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    heap.me = owners.SCAVENGER
    sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True)
    scavenge.scavenge(heap, sm, max_pages)
    heap.close()


def mutator(handle_json: str, steps: int, seed: int) -> None:
    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    heap.me = owners.mutator(0)
    m = Mutator(heap, 0, Workload(size_classes=(2, 6, 20), finalizer_fraction=0.3,
                                  large_fraction=0.0), rng=np.random.default_rng(seed))
    for _ in range(steps):
        m.step()
    heap.close()


def eager_freer(handle_json: str) -> None:
    """A sweeper under the eager policy: it frees every other in-use span, releasing each
    batch's pages as it frees them (the fail point kills it in the middle)."""
    from sweeperd.runtime import mheap
    from sweeperd.runtime.scavenge import ReleaseOnFree

    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    heap.me = owners.sweeper(0)
    ReleaseOnFree.install(heap)
    spans = heap.in_use_spans()[::2]
    for i in range(0, spans.size, 4):
        mheap.free_spans(heap, spans[i:i + 4])
    heap.close()
