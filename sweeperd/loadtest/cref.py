"""Real allocators as reference rows (``--c-reference``, policies ``c-glibc`` ... ``c-mimalloc``).

Theory of operation
-------------------
``cref/cref.c`` (our own program, C11 and pthreads) follows a scenario's phases with
``malloc``/``free`` — the same live-heap target, garbage rate, pinned every-Nth objects,
sizes and large fraction as the Go program (``goref/main.go``) and the daemon's mutators —
and prints one JSON line every ``sample_s`` (at most :data:`MAX_SAMPLE_MS`): the live bytes
it holds, counted by itself, and its resident anonymous memory (``/proc/self/statm``:
resident − shared, i.e. ``RssAnon``), read at the same instant.  :func:`run` builds it with
the system's ``cc`` (:func:`sweeperd.sys.cbuild.executable`, into the same private cache as
the sweep's kernels), runs it once per allocator with ``LD_PRELOAD`` of the allocator's
library (:data:`ALLOCATORS`: Debian's ``libjemalloc2``, ``libtcmalloc-minimal4``,
``libmimalloc2.0``; glibc's malloc needs none) at its defaults, or with the run's knobs in the
allocator's own environment variables (:func:`knob_env`), and turns the lines into rows with
the daemon runs' columns.  The program says on stderr which malloc it found in the process
(by each allocator's exported symbols); a run whose ``LD_PRELOAD`` did not take (``ld.so``
only warns) fails, naming it, instead of measuring glibc under another name.

The rows, and what they mean for a malloc heap:

* ``kernel_backed_bytes``: ``RssAnon`` — the allocator's heap, its metadata, the program's
  stacks (a few hundred KiB; a malloc heap has no arena of its own to read, unlike the
  daemon's memfd and Go's arena range);
* ``live_bytes``: what the program holds (objects, its chunks' pointer arrays and headers,
  its pinned arrays), exact at each sample; ``target_live_bytes``: what the scenario asks;
* the split of the excess: a ``malloc`` heap has no GC, so no garbage (a freed object is gone);
  the allocator's books are not read, so its free pages and its fragmentation are not told
  apart: the whole excess, ``RssAnon − live``, is ``free_backed_bytes`` — what its purge
  policy decides on — and ``excess_fragmentation_byte_seconds`` is null;
* ``retain_goal_bytes``: what Go's scavenger would keep for the same live heap at the
  scenario's GOGC (its heap goal + 10%: :func:`go_retain_goal`).  A malloc heap has no heap
  goal, and its ``RssAnon`` keeps a floor of metadata, thread caches and fragmentation that
  live + 10% would never see; so "seconds to the retain goal" asks, of both sides of a
  pair alike: how long until the heap is down to what Go would keep for it;
* ``cpu_mutator_s``: the whole process's CPU; ``allocated_bytes``: what it asked malloc for.

Figures an allocator does not expose (its purge CPU, bytes released, madvise calls, GC cycles,
allocation latency, the books against the kernel) are null (:data:`NOT_MEASURED`).

Errors: a missing library is :class:`AllocatorMissing` naming the file and the Debian package
(the run fails with it; the tests fail in CI and skip elsewhere); a failed build names the
compiler's error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sweeperd.loadtest.outdir import atomic_write
from sweeperd.loadtest.runner import RunResult
from sweeperd.loadtest.sampler import columns, split_columns
from sweeperd.pacing.scavpace import retain_goal
from sweeperd.runtime.sizeclasses import CLASS_SIZE
from sweeperd.sys import cbuild
from sweeperd.workload.scenario import Scenario

MUTATORS = 2  # threads allocating: the daemon's default mutator count, as the Go program's
MAX_SAMPLE_MS = 100  # the issue: every <= 100 ms
MIB = 1 << 20
MIN_HEAP_GOAL = 4 * MIB  # Go's heapminimum at GOGC 100
START_S = 60.0  # the program reads its input and starts within this (a build comes before)
NOT_MEASURED = ("scavenger_cpu_seconds", "released_bytes", "cpu_seconds_per_gib_released",
                "madvise_calls", "alloc_latency_p50_seconds", "alloc_latency_p99_seconds",
                "gc_cycles", "max_books_vs_kernel_error", "excess_fragmentation_byte_seconds")
# the environment an allocator reads: never inherited, so that "its defaults" are its own
CLEARED_ENV = ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")
CLEARED_PREFIXES = ("MIMALLOC_", "TCMALLOC_", "JE_MALLOC_", "MALLOC_")


class AllocatorMissing(RuntimeError):
    """The allocator's shared library is not on this machine."""


@dataclass(frozen=True)
class Knob:
    """One allocator option as a run's setting: its range (integers) or its choices."""

    lo: float = 0
    hi: float = 0
    integer: bool = True
    choices: tuple[str, ...] = ()
    default: object = None  # the allocator's own default where one value holds (None: unset)


@dataclass(frozen=True)
class Allocator:
    name: str  # glibc, jemalloc, ...
    soname: str | None  # the library LD_PRELOAD puts in (None: glibc's own malloc)
    package: str  # Debian's package that ships it
    knobs: dict[str, Knob]

    @property
    def policy(self) -> str:
        return f"c-{self.name}"


ALLOCATORS: dict[str, Allocator] = {a.name: a for a in (
    # glibc's malloc tunables (GLIBC_TUNABLES glibc.malloc.*): the trim threshold is what
    # decides when the top of its heap goes back (its "release policy")
    Allocator("glibc", None, "libc6", {"trim_threshold": Knob(0, 1 << 40),
                                        "mmap_threshold": Knob(0, 1 << 25),
                                        "arena_max": Knob(1, 1 << 16)}),
    # jemalloc 5.3's MALLOC_CONF options (-1: never purge; 0: purge at once)
    Allocator("jemalloc", "libjemalloc.so.2", "libjemalloc2",
              {"dirty_decay_ms": Knob(-1, 3_600_000, default=10_000),
               "muzzy_decay_ms": Knob(-1, 3_600_000, default=0),
               "background_thread": Knob(choices=("true", "false"), default="false"),
               "narenas": Knob(1, 4094)}),  # jemalloc's limit (it cuts more to 4094)
    # gperftools' TCMALLOC_RELEASE_RATE (0: never release; default 1.0) and
    # TCMALLOC_AGGRESSIVE_DECOMMIT (release every span as it is freed)
    Allocator("tcmalloc", "libtcmalloc_minimal.so.4", "libtcmalloc-minimal4",
              {"release_rate": Knob(0, 1000, integer=False, default=1.0),
               "aggressive_decommit": Knob(choices=("true", "false"), default="false")}),
    # mimalloc's purge delay in ms (-1: never; 0: at once): MIMALLOC_PURGE_DELAY from 2.1;
    # 2.0 (Debian 12 ships 2.0.9) calls it MIMALLOC_DECOMMIT_DELAY (mimalloc_series)
    Allocator("mimalloc", "libmimalloc.so.2", "libmimalloc2.0",
              {"purge_delay": Knob(-1, 3_600_000)}),
)}
POLICIES = tuple(a.policy for a in ALLOCATORS.values())


def allocator_of(policy: str) -> Allocator:
    """The allocator of a ``c-NAME`` policy; ValueError naming the known ones."""
    for a in ALLOCATORS.values():
        if a.policy == policy:
            return a
    raise ValueError(f"unknown C reference {policy!r}; known: {', '.join(POLICIES)}")


def lib_dirs() -> list[Path]:
    """Where Debian (and most systems) keep shared libraries, multiarch first."""
    multi = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    return [Path(p) for p in (f"/usr/lib/{multi}", f"/lib/{multi}", "/usr/lib64", "/usr/lib",
                              "/usr/local/lib", "/lib64", "/lib")]


def library(a: Allocator, dirs: list[Path] | None = None) -> Path | None:
    """The path of ``a``'s library (None for glibc, which needs none);
    :class:`AllocatorMissing` naming the file and the package when it is not found."""
    if a.soname is None:
        return None
    look = lib_dirs() if dirs is None else dirs
    for d in look:
        p = d / a.soname
        if p.is_file():
            return p
    raise AllocatorMissing(f"{a.policy} needs {a.soname}, not found in "
                           f"{', '.join(map(str, look))} (Debian: apt install {a.package})")


def knob_env(a: Allocator, settings: Mapping[str, object], lib: Path | None,
             base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The program's environment: ``base`` (default ours) less every allocator variable
    (:data:`CLEARED_ENV`, and any ``MIMALLOC_*``/``TCMALLOC_*``/``MALLOC_*``, in any case:
    mimalloc reads its names case-insensitively), plus
    ``LD_PRELOAD`` of ``lib`` and the run's knobs (None: the allocator's default) in the
    allocator's own variables."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k.upper() not in CLEARED_ENV and not k.upper().startswith(CLEARED_PREFIXES)}
    if lib is not None:
        env["LD_PRELOAD"] = str(lib)
    given = {k: v for k, v in settings.items() if k in a.knobs and v is not None}
    if not given:
        return env
    if a.name == "glibc":
        env["GLIBC_TUNABLES"] = ":".join(f"glibc.malloc.{k}={v}" for k, v in sorted(given.items()))
    elif a.name == "jemalloc":
        env["MALLOC_CONF"] = ",".join(f"{k}:{v}" for k, v in sorted(given.items()))
    elif a.name == "tcmalloc":
        if "release_rate" in given:
            env["TCMALLOC_RELEASE_RATE"] = f"{float(given['release_rate']):g}"  # type: ignore[arg-type]
        if "aggressive_decommit" in given:
            env["TCMALLOC_AGGRESSIVE_DECOMMIT"] = str(given["aggressive_decommit"])
    elif a.name == "mimalloc":
        delay = int(given["purge_delay"])  # type: ignore[call-overload]
        if lib is not None and mimalloc_series(lib) == "2.0":
            # 2.0 calls it the decommit delay and has no "never" there (a negative delay
            # decommits at once, measured): never is allow_decommit=0
            if delay < 0:
                env["MIMALLOC_ALLOW_DECOMMIT"] = "0"
            else:
                env["MIMALLOC_DECOMMIT_DELAY"] = str(delay)
        else:
            env["MIMALLOC_PURGE_DELAY"] = str(delay)
    return env


def mimalloc_series(lib: Path) -> str:
    """``"2.0"`` for mimalloc 2.0.x (``libmimalloc.so.2.0``, Debian 12's 2.0.9), where the
    purge delay is ``MIMALLOC_DECOMMIT_DELAY``; else ``""`` (2.1 and later:
    ``MIMALLOC_PURGE_DELAY``, -1 = never).  Read from the file the soname links to."""
    try:
        name = lib.resolve().name
    except OSError:
        return ""
    return "2.0" if name == "libmimalloc.so.2.0" or name.startswith("libmimalloc.so.2.0.") \
        else ""


def scenario_text(sc: Scenario, sample_s: float, workers: int = MUTATORS) -> str:
    """The program's input (``cref.c``'s header): its phases in bytes."""
    ms = max(1, min(MAX_SAMPLE_MS, round(sample_s * 1000)))
    lines = ["cref 1", f"workers {workers}", f"sample_ms {ms}"]
    for p in sc.phase:
        g = -1.0 if p.garbage_mib_s == "max" else float(p.garbage_mib_s) * MIB
        sizes = [int(CLASS_SIZE[c]) for c in p.size_classes]
        lines.append(" ".join(str(x) for x in (  # repr: every float read back exactly
            "phase", repr(float(p.seconds)), f"{p.live_from * MIB:.0f}",
            f"{p.live_to * MIB:.0f}", f"{g:.0f}", p.long_lived_every,
            repr(float(p.large_fraction)), len(sizes), *sizes)))
    lines.append("end")
    return "\n".join(lines) + "\n"


def build() -> Path:
    """The program, built with the system's cc (cached); RuntimeError saying why not."""
    src = resources.files("sweeperd.loadtest").joinpath("cref/cref.c")
    with resources.as_file(src) as path:
        exe = cbuild.executable(Path(path), "cref", ("-pthread",))
    if exe is None:
        raise RuntimeError(f"cannot build the C reference program: {cbuild.last_error}")
    return exe


def go_retain_goal(live: float, gogc: object) -> float:
    """What Go's scavenger would keep for a live heap of ``live`` bytes at ``gogc``: its heap
    goal (live x (1 + GOGC/100), at least Go's 4 MiB minimum at GOGC 100, scaled by GOGC) +
    10% (:func:`sweeperd.pacing.scavpace.retain_goal`); GOGC off: live + 10%."""
    if not isinstance(gogc, int):
        return float(retain_goal(int(live)))
    goal = max(live * (1 + gogc / 100), MIN_HEAP_GOAL * gogc / 100)
    return float(retain_goal(int(goal)))


def row(m: Mapping[str, float], gogc: object = 100) -> dict[str, float]:
    """A sample line of the program as a row with the daemon runs' columns (module doc);
    ``gogc``: the scenario's, for the retain goal (:func:`go_retain_goal`)."""
    r = dict.fromkeys(columns(), 0.0)
    live = float(m["live_bytes"])
    r.update({
        "t": float(m["t"]), "scenario_elapsed_s": float(m["t"]),
        "target_live_bytes": float(m["target_live_bytes"]), "live_bytes": live,
        "objects_bytes": live, "retain_goal_bytes": go_retain_goal(live, gogc),
        "kernel_backed_bytes": float(m["rss_anon_bytes"]),
        "cpu_mutator_s": float(m["cpu_s"]), "allocated_bytes": float(m["allocated_bytes"]),
    })
    r.update(split_columns(r))
    return r


SAMPLE_KEYS = ("t", "target_live_bytes", "live_bytes", "allocated_bytes", "rss_anon_bytes",
               "cpu_s")


def run(policy: str, sc: Scenario, rundir: Path, sample_s: float,
        on_sample: Callable[[float], None] | None = None,
        settings: Mapping[str, object] | None = None) -> RunResult:
    """The scenario under ``policy``'s allocator (``c-jemalloc``...) with the run's knobs.
    Every failure is the row's ``error`` (``ok`` false), never an exception."""
    res = RunResult(sc.name, policy, ok=False)
    t_start = time.monotonic()
    text = scenario_text(sc, sample_s)
    try:
        rundir.mkdir(parents=True, exist_ok=True)
        atomic_write(rundir / "scenario.toml", sc.to_toml())
        atomic_write(rundir / "cref.input", text)  # what the program read
        a = allocator_of(policy)
        lib = library(a)
        env = knob_env(a, settings or {}, lib)
        proc = _start(build(), env)
    except (AllocatorMissing, RuntimeError, ValueError, OSError) as e:
        res.error = str(e)
        res.wall_s = time.monotonic() - t_start
        return res
    lines: list[str] = []
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    err_reader = threading.Thread(target=_collect, args=(proc.stderr, lines), daemon=True)
    err_reader.start()
    deadline = time.monotonic() + sc.seconds + START_S
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _kill, args=(proc,))
    timer.daemon = True
    timer.start()
    said = ""
    try:
        proc.stdin.write(text)
        proc.stdin.close()
        for line in proc.stdout:
            m = json.loads(line)
            if not isinstance(m, dict) or any(
                    not isinstance(m.get(k), int | float) for k in SAMPLE_KEYS):
                raise ValueError(f"a sample line without its figures: {line[:200]!r}")
            if not res.rows:  # the program names its malloc before its first sample
                said = _wait_allocator(lines, err_reader)
                if not said.startswith(f"{a.name} "):
                    raise PreloadFailed(f"{policy}: the program ran {said or 'an unknown malloc'}"
                                        f", not {a.name}: LD_PRELOAD={lib} did not take")
            res.rows.append(row(m, sc.scenario.gogc))
            if on_sample is not None:
                on_sample(float(m["t"]))
        proc.wait()
        err_reader.join(5)
        res.allocator = said or _allocator_line(lines)
        if proc.returncode != 0:
            res.error = f"the C reference program {_ended(proc.returncode)}"
        elif not res.rows:
            res.error = "the C reference program printed no sample"
        else:
            res.ok = True
            res.allocator += _system_conf(a)
    except (ValueError, OSError, PreloadFailed) as e:
        res.error = str(e) if isinstance(e, PreloadFailed) else f"{type(e).__name__}: {e}"
    finally:
        timer.cancel()
        if proc.poll() is None:
            _kill(proc)
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                f.close()
    if time.monotonic() > deadline and not res.ok:
        res.error = f"the C reference program did not finish in {sc.seconds + START_S:g} s"
    res.exit_code = proc.returncode
    atomic_write(rundir / "cref.log", "\n".join(lines) + "\n")
    if not res.ok:
        res.log_tail = "\n".join(lines[-40:])
    res.wall_s = time.monotonic() - t_start
    return res


class PreloadFailed(RuntimeError):
    """The malloc in the program is not the allocator its row is named after."""


def _start(exe: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """The program started; a cached one that cannot be executed (cut short, removed by
    another checkout's build, a noexec mount) is removed and built again, once.  OSError
    naming the program when that fails too."""
    def popen(path: Path) -> subprocess.Popen[str]:
        return subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
    try:
        return popen(exe)
    except OSError:
        with contextlib.suppress(OSError):
            exe.unlink()
    fresh = build()
    try:
        return popen(fresh)
    except OSError as e:
        raise OSError(f"cannot run the C reference program {fresh}: {e.strerror or e}") from None


def _ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with {code}"


def _wait_allocator(lines: list[str], reader: threading.Thread, timeout_s: float = 10.0
                    ) -> str:
    """The program's ``allocator=`` line, once the stderr reader has it (it is printed
    before the first sample: waited for, up to ``timeout_s``, or until stderr closes)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if said := _allocator_line(lines):
            return said
        if not reader.is_alive():
            break
        time.sleep(0.005)
    return _allocator_line(lines)


def _system_conf(a: Allocator) -> str:
    """jemalloc also reads the system-wide ``/etc/malloc.conf`` (a symlink's target is its
    options): the environment cannot unset it, so a row says when it is there."""
    if a.name != "jemalloc":
        return ""
    with contextlib.suppress(OSError):
        return f" (and /etc/malloc.conf: {os.readlink('/etc/malloc.conf')})"
    return ""


def _collect(stream: object, lines: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line.rstrip("\n"))


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)


def _allocator_line(lines: list[str]) -> str:
    """``"jemalloc 5.3.0-0-g54ea..."`` from the program's ``cref: allocator=... version=...``
    line; "" without one."""
    for ln in lines:
        if m := re.match(r"cref: allocator=(\S+) version=(.*)$", ln):
            return f"{m[1]} {m[2].strip() or '?'}"
    return ""
