"""The sweep benchmark: figures measured in one run, with their in-run baselines.

``bench sweep``: build a heap of ``spans`` spans of one size class, all objects allocated and
payload pages touched, keep the first ``live`` fraction of objects (by address), start a cycle
and sweep every span with the vectorized engine, in batches as a sweeper worker would.  The
baseline is memcpy (``numpy.copyto``) of a buffer the size of the metadata the sweep reads,
timed in the same process right after.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeperd.bench.common import fill_heap, mark_prefix, memcpy_bytes_per_s, reset
from sweeperd.runtime import kernels, shards
from sweeperd.runtime.heap import H_BENCH_GO, H_BENCH_READY, H_SWEEPGEN, Heap
from sweeperd.runtime.owners import MAX_SWEEPERS
from sweeperd.runtime.sizeclasses import (
    CLASS_NELEMS,
    CLASS_NPAGES,
    CLASS_NWORDS,
    CLASS_SIZE,
    PAGE_SIZE,
)
from sweeperd.runtime.sweep import SPAN_META_BYTES, SweepStats, sweep_batch
from sweeperd.runtime.sweepgen import try_claim
from sweeperd.sys.procs import reap


@dataclass
class SweepBenchConfig:
    spans: int = 262_144
    size_class: int = 6  # 64-byte objects
    live: float = 0.0
    heap_mib: int | None = None
    batch: int = 65_536
    rounds: int = 3
    chunk_pages: int = 16_384  # pages a worker process takes at once (--workers runs)

    def validate(self) -> None:
        if self.spans <= 0:
            raise ValueError(f"--spans must be positive, got {self.spans}")
        if not 1 <= self.size_class < len(CLASS_SIZE):
            raise ValueError(f"--size-class must be 1..{len(CLASS_SIZE) - 1} (a small class), "
                             f"got {self.size_class}")
        if not 0.0 <= self.live <= 1.0:
            raise ValueError(f"--live must be within [0, 1], got {self.live}")
        if self.batch <= 0 or self.rounds <= 0:
            raise ValueError("--batch and --rounds must be positive")
        if self.chunk_pages < 64:
            raise ValueError(f"--chunk-pages must be at least 64, got {self.chunk_pages}")
        need = self.spans * int(CLASS_NPAGES[self.size_class]) * PAGE_SIZE
        if self.heap_mib is not None and self.heap_mib * (1 << 20) < need:
            raise ValueError(f"--heap-mib {self.heap_mib} is too small for {self.spans} spans "
                             f"of class {self.size_class} ({need >> 20} MiB needed)")

    def heap_bytes(self) -> int:
        return (self.heap_mib << 20) if self.heap_mib else (
            self.spans * int(CLASS_NPAGES[self.size_class]) * PAGE_SIZE)

    def check_fits(self, available: int) -> None:
        """The benchmark writes every page of its heap: refuse (ValueError, naming the
        flags) a heap larger than ``available`` bytes (the host's MemAvailable)."""
        if self.heap_bytes() > available:
            raise ValueError(f"a heap of {self.heap_bytes() >> 20} MiB (--spans {self.spans}, "
                             f"--size-class {self.size_class}"
                             + (f", --heap-mib {self.heap_mib}" if self.heap_mib else "")
                             + f") does not fit in the {available >> 20} MiB this host has "
                             f"available")


def _result(results: Any, procs: list[Any]) -> dict[str, Any]:
    """Next worker report; fails loudly (instead of hanging) if a worker died."""
    import queue

    while True:
        try:
            got: dict[str, Any] = results.get(timeout=0.5)
            return got
        except queue.Empty:
            dead = [p.name for p in procs if not p.is_alive() and p.exitcode != 0]
            if dead:
                raise RuntimeError(f"bench: sweeper worker(s) died: {', '.join(dead)}") from None


def bench_sweep_processes(cfg: SweepBenchConfig, worker_counts: list[int]) -> dict[str, Any]:
    """The same heap swept by 1, 2, ... sweeper worker processes; one JSON per count."""
    import multiprocess as mp

    from workers.sweeper import bench_main

    cfg.validate()
    for n in worker_counts:
        if not 1 <= n <= MAX_SWEEPERS:
            raise ValueError(f"--workers counts must be 1..{MAX_SWEEPERS}, got {n}")
    ctx = mp.get_context("spawn")
    npg = int(CLASS_NPAGES[cfg.size_class])
    heap_bytes = (cfg.heap_mib << 20) if cfg.heap_mib else cfg.spans * npg * PAGE_SIZE
    chunk = cfg.chunk_pages
    runs: list[dict[str, Any]] = []
    with Heap.create(heap_bytes) as heap:
        for n in worker_counts:
            results = ctx.Queue()
            heap.header[H_BENCH_GO] = heap.header[H_BENCH_READY] = 0
            procs = [ctx.Process(target=bench_main, name=f"sweeper-{i}",
                                 args=(heap.handle.to_dict(), i, results,
                                       cfg.rounds, chunk))
                     for i in range(n)]
            for p in procs:
                p.start()
            try:
                best = None
                times = []
                for r in range(1, cfg.rounds + 1):
                    reset(heap)
                    spans = fill_heap(heap, cfg.size_class, cfg.spans, touch=not runs and r == 1)
                    mark_prefix(heap, spans, cfg.live)
                    heap.header[H_SWEEPGEN] += 2
                    shards.assign(heap, n)
                    heap.header[H_BENCH_READY] = r  # workers stop sleeping and spin
                    time.sleep(0.05)
                    heap.header[H_BENCH_GO] = r  # go
                    per = [_result(results, procs) for _ in range(n)]
                    # first worker's start to last worker's end, on the shared monotonic clock
                    dt = max(r["t1"] for r in per) - min(r["t0"] for r in per)
                    times.append(dt)
                    if os.environ.get("SWEEPERD_BENCH_TRACE"):
                        t00 = min(r["t0"] for r in per)
                        print(n, [(round((r["t0"] - t00) * 1e3, 2),
                                   round((r["t1"] - t00) * 1e3, 2), r["spans"]) for r in per],
                              file=sys.stderr)
                    if shards.unswept(heap).size or shards.unfinished(heap).size:
                        raise RuntimeError("bench: spans left unswept after the workers ended")
                    if best is None or dt < best[0]:
                        best = (dt, per)
            finally:
                reap(procs)
                results.close()
            assert best is not None
            dt, per = best
            nsp = sum(r["spans"] for r in per)
            swept_bytes = sum(r["bitmap_bytes"] for r in per) + nsp * SPAN_META_BYTES
            memcpy = memcpy_bytes_per_s(swept_bytes)
            runs.append({
                "workers": n, "mode": "processes", "seconds": dt,
                "seconds_median": float(np.median(times)), "seconds_all_rounds": times,
                "spans": nsp, "spans_per_s": nsp / dt,
                "pages_per_s": sum(r["pages"] for r in per) / dt,
                "objects_freed": sum(r["objects_freed"] for r in per),
                "spans_freed": sum(r["spans_freed"] for r in per),
                "spans_by_worker": [r["spans"] for r in sorted(per, key=lambda r: r["worker"])],
                "bytes_swept": swept_bytes, "bitmap_bytes_per_s": swept_bytes / dt,
                "memcpy_bytes_per_s": memcpy, "ratio_to_memcpy": swept_bytes / dt / memcpy,
            })
    out: dict[str, Any] = {
        "bench": "sweep", "kernels": kernels.enabled(), "size_class": cfg.size_class,
        "object_bytes": int(CLASS_SIZE[cfg.size_class]), "live_fraction": cfg.live,
        "spans": cfg.spans, "rounds": cfg.rounds, "chunk_pages": chunk,
        "runs": runs,
    }
    if len(runs) > 1:
        out["speedup"] = runs[-1]["spans_per_s"] / runs[0]["spans_per_s"]
        out["speedup_median"] = runs[0]["seconds_median"] / runs[-1]["seconds_median"]
    return out


def bench_sweep(cfg: SweepBenchConfig) -> dict[str, Any]:
    cfg.validate()
    npg = int(CLASS_NPAGES[cfg.size_class])
    heap_bytes = (cfg.heap_mib << 20) if cfg.heap_mib else cfg.spans * npg * PAGE_SIZE
    best: tuple[float, SweepStats] | None = None
    times = []
    with Heap.create(heap_bytes) as heap:
        for r in range(cfg.rounds):
            reset(heap)
            spans = fill_heap(heap, cfg.size_class, cfg.spans, touch=r == 0)
            mark_prefix(heap, spans, cfg.live)
            heap.header[H_SWEEPGEN] += 2  # the sweep phase begins
            h = heap.sweepgen
            stats = SweepStats()
            t0 = time.perf_counter()
            for i in range(0, spans.size, cfg.batch):
                mine = try_claim(heap.span_sweepgen, spans[i : i + cfg.batch], h)
                stats.add(sweep_batch(heap, mine))
            dt = time.perf_counter() - t0
            times.append(dt)
            if best is None or dt < best[0]:
                best = (dt, stats)
        arena_backed = heap.arena_backed_bytes()
        meta_backed = heap.meta_backed_bytes()
    assert best is not None
    dt, stats = best
    swept_bytes = stats.bitmap_bytes + stats.spans * SPAN_META_BYTES
    memcpy = memcpy_bytes_per_s(swept_bytes)
    rate = swept_bytes / dt
    return {
        "bench": "sweep",
        "kernels": kernels.enabled(),  # the compiled sweep (runtime/kernels.py) or numpy's
        "spans": stats.spans,
        "size_class": cfg.size_class,
        "object_bytes": int(CLASS_SIZE[cfg.size_class]),
        "objects_per_span": int(CLASS_NELEMS[cfg.size_class]),
        "bitmap_words_per_span": int(CLASS_NWORDS[cfg.size_class]),
        "live_fraction": cfg.live,
        "workers": 1,
        "mode": "in-process",
        "batch": cfg.batch,
        "rounds": cfg.rounds,
        "seconds": dt,
        "seconds_all_rounds": times,
        "spans_per_s": stats.spans / dt,
        "pages_per_s": stats.pages / dt,
        "objects_freed": stats.objects_freed,
        "spans_freed": stats.spans_freed,
        "bytes_swept": swept_bytes,
        "bitmap_bytes_per_s": rate,
        "memcpy_bytes_per_s": memcpy,
        "ratio_to_memcpy": rate / memcpy,
        "heap_bytes": heap_bytes,
        "arena_backed_bytes": arena_backed,
        "meta_backed_bytes": meta_backed,
        "meta_fraction_of_heap": meta_backed / heap_bytes,
    }
