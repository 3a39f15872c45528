"""The C reference program (``sweeperd/loadtest/cref``) under the real allocators: it follows
a scenario, each allocator is the one named, the knobs reach the allocator, and a library
that is missing or does not take fails the run by name."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from sweeperd.loadtest import cref
from sweeperd.loadtest.runner import RunResult
from sweeperd.workload import scenario as scenarios

from .conftest import not_here

pytestmark = pytest.mark.timeout(240)

FOLLOW = """
[scenario]
name = "follow"
description = "levels, a slow ramp and a drop, with pinned and large objects"
heap_mib = 512

[[phase]]
name = "level"
seconds = 1.5
live_mib = 48
garbage_mib_s = 32
size_classes = [1, 5, 20, 40]
long_lived_every = 50

[[phase]]
name = "ramp"
seconds = 3
live_mib = [48, 72]
garbage_mib_s = 16
large_fraction = 0.05

[[phase]]
name = "drop"
seconds = 1.5
live_mib = 24
garbage_mib_s = 32
"""

ALLOCATORS = tuple(cref.ALLOCATORS)


def need(name: str) -> cref.Allocator:
    """The allocator, its library present (else not_here: a failure in CI)."""
    a = cref.ALLOCATORS[name]
    try:
        cref.library(a)
    except cref.AllocatorMissing as e:
        not_here(str(e))
    return a


def _scenario(text: str) -> scenarios.Scenario:
    return scenarios.parse(text, "the test's scenario")


def _phase_ends(sc: scenarios.Scenario) -> list[float]:
    out, t = [], 0.0
    for p in sc.phase:
        t += p.seconds
        out.append(t)
    return out


@pytest.mark.parametrize("name", ALLOCATORS)
def test_the_program_follows_the_scenario_under_each_allocator(name: str, tmp_path: Path) -> None:
    """In every phase, once its live bytes first come within 2% of the target (the program
    allocates a level's bytes in milliseconds: waited for, not raced), every later sample of
    the phase stays within 2% — through a level with pinned objects, a ramp with large ones,
    and a drop; samples come at most 100 ms apart; the kernel holds at least the live bytes
    (every object is written); and the malloc in the process is the one named."""
    need(name)
    sc = _scenario(FOLLOW)
    res = cref.run(f"c-{name}", sc, tmp_path, 0.1)
    assert res.ok, (res.error, res.log_tail)
    assert res.allocator.startswith(f"{name} "), res.allocator
    ts = [r["scenario_elapsed_s"] for r in res.rows]
    gaps = sorted(b - a for a, b in itertools.pairwise(ts))
    assert gaps[len(gaps) // 2] <= 0.11, gaps  # every 100 ms (the median: a loaded host)
    assert ts[-1] >= sc.seconds - 0.15
    start = 0.0
    for end, phase in zip(_phase_ends(sc), sc.phase, strict=True):
        rows = [r for r in res.rows if start <= r["scenario_elapsed_s"] < end]
        err = [abs(r["live_bytes"] - r["target_live_bytes"]) / r["target_live_bytes"]
               for r in rows]
        reached = next((i for i, e in enumerate(err) if e <= 0.02), None)
        assert reached is not None, (phase.name, err)
        assert max(err[reached:]) <= 0.02, (phase.name, err)
        assert len(err) - reached >= 5, (phase.name, err)  # it held for most of the phase
        start = end
    for r in res.rows:
        assert r["kernel_backed_bytes"] >= 0.95 * r["live_bytes"], r
        parts = r["garbage_bytes"] + r["free_backed_bytes"] + r["fragmentation_bytes"]
        assert parts == r["kernel_backed_bytes"] - r["live_bytes"]
        assert r["garbage_bytes"] == 0  # a malloc heap: no GC, nothing uncollected
    assert (tmp_path / "cref.log").read_text().startswith("cref: allocator=")


DROP = """
[scenario]
name = "drop"
description = "a heap that empties, then churns lightly"
heap_mib = 512

[[phase]]
name = "fill"
seconds = 1
live_mib = 96
garbage_mib_s = 8

[[phase]]
name = "after"
seconds = 3
live_mib = 4
garbage_mib_s = 16
"""


def _end_excess_mib(res: RunResult) -> float:
    last = res.rows[-1]
    return (last["kernel_backed_bytes"] - last["live_bytes"]) / 2**20


@pytest.mark.parametrize(("name", "purge_now", "never"), [
    ("jemalloc", {"dirty_decay_ms": 0}, {"dirty_decay_ms": -1}),
    ("mimalloc", {"purge_delay": 0}, {"purge_delay": -1}),
    # gperftools 2.10 at any release rate released nothing of this 96 MiB drop (measured):
    # after a look that finds nothing to release, its page heap waits for 2^18 pages (2 GiB)
    # more frees (kDefaultReleaseDelay); aggressive decommit releases every freed span
    ("tcmalloc", {"aggressive_decommit": "true"}, {"release_rate": 0.0}),
])
def test_the_knobs_reach_the_allocator(name: str, purge_now: dict[str, object],
                                       never: dict[str, object], tmp_path: Path) -> None:
    """The same drop, the allocator told to give memory back at once and told never to: the
    first ends with far less held beyond the live heap than the second."""
    need(name)
    sc = _scenario(DROP)
    now = cref.run(f"c-{name}", sc, tmp_path / "now", 0.1, settings=purge_now)
    keep = cref.run(f"c-{name}", sc, tmp_path / "keep", 0.1, settings=never)
    assert now.ok and keep.ok, (now.error, keep.error)
    assert _end_excess_mib(keep) >= 48, keep.rows[-1]  # the drop's 90 MiB stayed
    assert _end_excess_mib(now) * 3 <= _end_excess_mib(keep), (now.rows[-1], keep.rows[-1])


def test_a_missing_library_fails_the_run_naming_the_package(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(cref, "lib_dirs", lambda: [tmp_path])  # a machine without it
    with pytest.raises(cref.AllocatorMissing, match="apt install libjemalloc2"):
        cref.library(cref.ALLOCATORS["jemalloc"])
    res = cref.run("c-jemalloc", _scenario(DROP), tmp_path, 0.1)
    assert not res.ok and "libjemalloc.so.2" in res.error and "libjemalloc2" in res.error
    assert cref.library(cref.ALLOCATORS["glibc"]) is None  # glibc's needs none


def test_a_preload_that_does_not_take_fails_the_run(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that is no malloc (libm) in LD_PRELOAD: the program finds glibc's malloc,
    and the row is not measured under jemalloc's name."""
    libm = next((d / "libm.so.6" for d in cref.lib_dirs() if (d / "libm.so.6").is_file()), None)
    if libm is None:
        not_here("no libm.so.6 in the library directories")
    monkeypatch.setattr(cref, "library", lambda a, dirs=None: libm)
    res = cref.run("c-jemalloc", _scenario(DROP), tmp_path, 0.1)
    assert not res.ok and "ran glibc" in res.error and "did not take" in res.error, res.error


def test_knob_env_sets_each_allocators_own_variables_and_nothing_inherited() -> None:
    base = {"PATH": "/bin", "MALLOC_CONF": "dirty_decay_ms:5", "MIMALLOC_VERBOSE": "1",
            "TCMALLOC_RELEASE_RATE": "9", "GLIBC_TUNABLES": "glibc.malloc.arena_max=1",
            "LD_PRELOAD": "/evil.so"}
    lib = Path("/usr/lib/libjemalloc.so.2")
    a = cref.ALLOCATORS
    assert cref.knob_env(a["glibc"], {}, None, base) == {"PATH": "/bin"}  # its defaults
    env = cref.knob_env(a["jemalloc"], {"dirty_decay_ms": 1000, "background_thread": "true",
                                        "narenas": None}, lib, base)
    assert env == {"PATH": "/bin", "LD_PRELOAD": str(lib),
                   "MALLOC_CONF": "background_thread:true,dirty_decay_ms:1000"}
    mi = cref.knob_env(a["mimalloc"], {"purge_delay": -1}, lib, base)  # 2.1+ (not 2.0's file)
    assert mi["MIMALLOC_PURGE_DELAY"] == "-1" and "MIMALLOC_VERBOSE" not in mi
    assert cref.knob_env(a["tcmalloc"], {"release_rate": 10.0}, lib, base)[
        "TCMALLOC_RELEASE_RATE"] == "10"
    assert cref.knob_env(a["glibc"], {"trim_threshold": 0, "arena_max": 2}, None, base)[
        "GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"


def test_mimalloc_2_0_takes_its_own_names_for_the_purge_delay(tmp_path: Path) -> None:
    """Debian 12's mimalloc 2.0.9 reads MIMALLOC_DECOMMIT_DELAY, and a negative delay there
    decommits at once (measured): -1 (never) is MIMALLOC_ALLOW_DECOMMIT=0."""
    real = tmp_path / "libmimalloc.so.2.0"
    real.write_bytes(b"")
    (tmp_path / "libmimalloc.so.2").symlink_to(real.name)
    lib = tmp_path / "libmimalloc.so.2"
    assert cref.mimalloc_series(lib) == "2.0"
    a = cref.ALLOCATORS["mimalloc"]
    assert cref.knob_env(a, {"purge_delay": 25}, lib, {})["MIMALLOC_DECOMMIT_DELAY"] == "25"
    never = cref.knob_env(a, {"purge_delay": -1}, lib, {})
    assert never["MIMALLOC_ALLOW_DECOMMIT"] == "0" and "MIMALLOC_DECOMMIT_DELAY" not in never
    newer = tmp_path / "libmimalloc.so.2.1"
    newer.write_bytes(b"")
    assert cref.mimalloc_series(newer) == ""


@pytest.mark.parametrize("text", [
    "", "cref 2\nend\n", "cref 1\nend\n", "cref 1\nworkers 0\nend\n",
    "cref 1\nphase 1 0 0 0 0 0 1 16\n",  # no end
    "cref 1\nphase 0 0 0 0 0 0 1 16\nend\n", "cref 1\nphase 1 0 0 0 0 2 1 16\nend\n",
    "cref 1\nphase 1 0 0 0 0 0 1 0\nend\n", "cref 1\nphase 1 nan 0 0 0 0 1 16\nend\n",
    "cref 1\nphase 1 0 0 0 0 0 3 16 32\nend\n", "cref 1\nbogus\nend\n",
    "cref 1\n" + "x" * 9000 + "\nend\n",
])
def test_the_program_refuses_a_bad_input_by_name(text: str) -> None:
    import subprocess

    r = subprocess.run([str(cref.build())], input=text, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "cref: bad scenario on stdin" in r.stderr, (r.returncode,
                                                                             r.stderr)
    assert r.stdout == ""


def test_the_scenario_text_is_the_scenarios_phases_in_bytes() -> None:
    sc = _scenario(FOLLOW)
    lines = cref.scenario_text(sc, 0.25).splitlines()
    assert lines[:3] == ["cref 1", "workers 2", "sample_ms 100"]  # at most 100 ms
    first = lines[3].split()
    assert first[:8] == ["phase", "1.5", str(48 << 20), str(48 << 20), str(32 << 20),
                         "50", "0.0", "4"]
    assert lines[-1] == "end" and len(lines) == 4 + len(sc.phase)


def test_a_program_killed_mid_run_fails_its_row_and_leaves_nothing(tmp_path: Path) -> None:
    """kill -9 of the C program after its first sample: the run ends at once (not at the
    scenario's end), not ok, with the exit named; no cref process is left."""
    import os
    import signal
    import time

    sc = _scenario(DROP.replace("seconds = 3", "seconds = 120"))
    killed: list[int] = []

    def kill_it(t: float) -> None:
        if killed:
            return
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if ppid == os.getpid() and "cref-" in exe:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))

    t0 = time.monotonic()
    res = cref.run("c-glibc", sc, tmp_path, 0.1, on_sample=kill_it)
    assert killed, "no cref child found to kill"
    assert time.monotonic() - t0 < 60  # the scenario would take 121 s
    assert not res.ok and res.exit_code == -signal.SIGKILL, (res.error, res.exit_code)
    assert "was killed by SIGKILL" in res.error
    assert not os.path.exists(f"/proc/{killed[0]}")  # reaped, not left a zombie


@pytest.mark.parametrize(("every", "large"), [(0, 0.0), (0, 1.0), (1, 0.0), (3, 0.5)])
def test_a_level_is_held_without_churning_and_pinning_everything_still_ends(
        every: int, large: float, tmp_path: Path) -> None:
    """A level of 40 MiB with 1 MiB/s of garbage for 3 s: the program allocates what the
    scenario asks (the level once, the garbage), not chunks made only to be dropped (a chunk
    that overshot its target used to free the oldest and reopen the gap: ~20,000x the
    schedule); every object pinned (long_lived_every = 1) still follows the level and ends
    (without garbage there: pinned garbage is live beyond the level, as the scenario says)."""
    garbage = 0 if every == 1 else 1
    sc = _scenario(f"""
[scenario]
name = "level"
description = "a level"
heap_mib = 256

[[phase]]
name = "level"
seconds = 3
live_mib = 40
garbage_mib_s = {garbage}
long_lived_every = {every}
large_fraction = {large}
""")
    res = cref.run("c-glibc", sc, tmp_path, 0.1)
    assert res.ok, (res.error, res.log_tail)
    last = res.rows[-1]
    asked = (40 + 3 * garbage) * 2**20
    assert last["allocated_bytes"] <= 1.25 * asked, (last["allocated_bytes"] / asked, last)
    assert abs(last["live_bytes"] - last["target_live_bytes"]) <= 0.02 * last["target_live_bytes"]
