"""The allocation benchmark: one mutator on the daemon's bulk path, against Go's figure."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sweeperd.runtime.heap import H_SWEEPGEN, Heap
from sweeperd.runtime.heapstats import heap_stats
from sweeperd.runtime.sizeclasses import CLASS_NPAGES, CLASS_SIZE
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.runtime.sweepgen import try_claim
from sweeperd.workload.mutator import Mutator, Workload

GO_ALLOC_OBJECTS_PER_S = (13e6, 19e6)  # Go 1.19, 64 B objects, one goroutine, this machine kind


def bench_alloc(size_class: int, seconds: float, heap_mib: int) -> dict[str, Any]:
    """One mutator allocating as fast as it can (the daemon's bulk path, payloads written),
    in this process; whenever the heap is 90% full everything is dropped and swept, so most
    allocation reuses backed pages, as in a running daemon."""
    if not 1 <= size_class < len(CLASS_SIZE) or CLASS_NPAGES[size_class] != 1:
        raise ValueError(f"--size-class must be a one-page small class, got {size_class}")
    if seconds <= 0 or heap_mib <= 0:
        raise ValueError("--seconds and --heap-mib must be positive")
    cfg = Workload(size_classes=(size_class,), mean_lifetime_cycles=0.1,
                        finalizer_fraction=0.0, large_fraction=0.0)
    with Heap.create(heap_mib << 20) as heap:
        m = Mutator(heap, 0, cfg, rng=np.random.default_rng(1))
        m.sweep_pages_per_byte = 0.0
        objects = cycles = steps = 0
        busy = 0.0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            n = m.step()
            busy += time.perf_counter() - t0
            objects += n
            steps += 1
            hs = heap_stats(heap) if n == 0 or steps % 16 == 0 else None
            if n == 0 or (hs is not None and hs.in_use_bytes > 0.9 * hs.heap_bytes):
                m.flush()
                m.mark(heap.sweepgen + 2)  # every object has died
                heap.header[H_SWEEPGEN] += 2
                sweep_batch(heap, try_claim(heap.span_sweepgen, heap.in_use_spans(),
                                            heap.sweepgen))
                cycles += 1
        rate = objects / busy
        return {
            "bench": "alloc", "size_class": size_class,
            "object_bytes": int(CLASS_SIZE[size_class]), "seconds": busy,
            "objects": objects, "objects_per_s": rate,
            "bytes_per_s": rate * int(CLASS_SIZE[size_class]), "gc_cycles": cycles,
            "heap_bytes": heap.heap_bytes, "arena_backed_bytes": heap.arena_backed_bytes(),
            "go_1_19_objects_per_s": list(GO_ALLOC_OBJECTS_PER_S),
            "ratio_to_go": rate / (sum(GO_ALLOC_OBJECTS_PER_S) / 2),
        }
