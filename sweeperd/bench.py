"""Benchmarks that print figures measured in one run, with their in-run baselines.

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

from . import mark, mheap
from .heap import H_BENCH_GO, H_BENCH_READY, H_SWEEPGEN, Heap
from .malloc import alloc_all
from .sizeclasses import CLASS_NELEMS, CLASS_NPAGES, CLASS_NWORDS, CLASS_SIZE, PAGE_SIZE
from .sweep import SPAN_META_BYTES, SweepStats, sweep_batch
from .sweepgen import try_claim

GO_SPANS_PER_S = (3.1e6, 3.3e6)  # Go 1.19 runtime.GC() on this machine kind, same heap shape


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


def fill_heap(heap: Heap, sizeclass: int, nspans: int, touch: bool = True) -> np.ndarray:
    """Allocate ``nspans`` spans of ``sizeclass``, every slot taken, payload pages written
    (unless ``touch`` is false: a later round of a benchmark whose pages already hold bytes)."""
    if CLASS_NPAGES[sizeclass] == 1:
        spans, _ = mheap.alloc_spans(heap, sizeclass, nspans)
    else:
        spans = np.array([mheap.alloc_span(heap, sizeclass)[0] for _ in range(nspans)])
    if spans.size < nspans:
        raise ValueError(f"heap holds only {spans.size} spans of class {sizeclass}")
    alloc_all(heap, spans)
    npg = int(CLASS_NPAGES[sizeclass])
    for s in range(0, spans.size if touch else 0, 4096):  # payload pages, a chunk at a time
        chunk = spans[s : s + 4096]
        lo, hi = int(chunk[0]) * PAGE_SIZE, (int(chunk[-1]) + npg) * PAGE_SIZE
        heap.arena[lo:hi] = 0xA5
    return spans


def mark_prefix(heap: Heap, spans: np.ndarray, live: float) -> int:
    """Mark the first ``live`` fraction of all objects of ``spans`` (address order)."""
    ne = heap.span_nelems[spans].astype(np.int64)
    total = int(ne.sum())
    nlive = round(live * total)
    if nlive == 0:
        return 0
    cum = np.cumsum(ne)
    nfull = int(np.searchsorted(cum, nlive, side="right"))
    mark.mark_spans_fully(heap, spans[:nfull])
    rest = nlive - (int(cum[nfull - 1]) if nfull else 0)
    if rest:
        mark.mark_objects(heap, np.full(rest, spans[nfull]), np.arange(rest))
    return nlive


def memcpy_bytes_per_s(nbytes: int, repeat: int = 5) -> float:
    src = np.ones(max(nbytes, 4096) // 8, dtype=np.uint64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm both buffers
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return src.nbytes / best


def _reset(heap: Heap) -> None:
    """Free whatever the last round kept (one in-process sweep of everything, all dead)."""
    old = heap.in_use_spans()
    if old.size:
        heap.header[H_SWEEPGEN] += 2
        sweep_batch(heap, try_claim(heap.span_sweepgen, old, heap.sweepgen))


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

    from workers.procs import reap
    from workers.sweeper import bench_main

    from . import shards

    cfg.validate()
    for n in worker_counts:
        if not 1 <= n <= 64:
            raise ValueError(f"--workers counts must be 1..64, got {n}")
    ctx = mp.get_context("spawn")
    npg = int(CLASS_NPAGES[cfg.size_class])
    heap_bytes = (cfg.heap_mib << 20) if cfg.heap_mib else cfg.spans * npg * PAGE_SIZE
    chunk = max(1024, cfg.chunk_pages)
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
                    _reset(heap)
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
                "ratio_to_go": nsp / dt / (sum(GO_SPANS_PER_S) / 2),
            })
    out: dict[str, Any] = {
        "bench": "sweep", "size_class": cfg.size_class,
        "object_bytes": int(CLASS_SIZE[cfg.size_class]), "live_fraction": cfg.live,
        "spans": cfg.spans, "rounds": cfg.rounds, "chunk_pages": chunk,
        "go_1_19_spans_per_s": list(GO_SPANS_PER_S), "runs": runs,
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
            _reset(heap)
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
        "go_1_19_spans_per_s": list(GO_SPANS_PER_S),
        "ratio_to_go": stats.spans / dt / (sum(GO_SPANS_PER_S) / 2),
        "heap_bytes": heap_bytes,
        "arena_backed_bytes": arena_backed,
        "meta_backed_bytes": meta_backed,
        "meta_fraction_of_heap": meta_backed / heap_bytes,
    }


GO_ALLOC_OBJECTS_PER_S = (13e6, 19e6)  # Go 1.19, 64 B objects, one goroutine, this machine kind


def bench_alloc(size_class: int, seconds: float, heap_mib: int) -> dict[str, Any]:
    """One mutator allocating as fast as it can (the daemon's bulk path, payloads written),
    in this process; whenever the heap is 90% full everything is dropped and swept, so most
    allocation reuses backed pages, as in a running daemon."""
    from workers.mutator import Mutator

    from .config import MutatorConfig
    from .heapstats import heap_stats

    if not 1 <= size_class < len(CLASS_SIZE) or CLASS_NPAGES[size_class] != 1:
        raise ValueError(f"--size-class must be a one-page small class, got {size_class}")
    if seconds <= 0 or heap_mib <= 0:
        raise ValueError("--seconds and --heap-mib must be positive")
    cfg = MutatorConfig(size_classes=(size_class,), mean_lifetime_cycles=0.1,
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


GO_SECONDS_TO_RETAIN_GOAL = 8.5  # Go 1.19, 2 GiB of 64 B objects, first 10% kept, this kind


def _kernel_one_call(heap: Heap, nbytes: int) -> float:
    """Bytes/s of one MADV_REMOVE over ``nbytes`` of the same arena, freshly touched."""
    from .sysmem import MADV, Kernel

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
    from workers.scavenger import Scavenger

    from .heap import H_HEAP_GOAL
    from .heapstats import marked_bytes
    from .scavpace import Pacer
    from .sysmem import SysMem

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
