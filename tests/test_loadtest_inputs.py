"""``sweeperd loadtest``'s inputs from outside: the ``--out`` directory (never an existing,
foreign or symlinked one), report files written atomically and a full disk named with nothing
lost (a real tmpfs of 64 KiB), and a ``--replay`` trace's span and heap checked against the
scenario limits before any daemon starts (real messy traces; hypothesis over hostile text)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeperd.loadtest import replay
from sweeperd.loadtest.main import (
    EXIT_CANNOT_WRITE,
    Options,
    Plan,
    UsageError,
    finish,
    plan,
    summarize_runs,
)
from sweeperd.loadtest.outdir import CannotWrite, OutDir, OutDirError, atomic_write
from sweeperd.loadtest.runner import RunResult
from sweeperd.loadtest.sampler import columns
from sweeperd.workload import scenario as scenarios

from .conftest import not_here

# real messy traces (from public bug reports) and the values they must read as
CASES = Path(__file__).resolve().parent / "data" / "cases"
MIB = 1 << 20


# --- --out -------------------------------------------------------------------------------


def test_out_is_made_mode_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        out = OutDir.create(tmp_path / "a" / "b" / "report")
    finally:
        os.umask(old)
    try:
        st_ = os.lstat(out.path)
        assert stat.S_ISDIR(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o700
        assert st_.st_uid == os.geteuid()
    finally:
        out.close()


def test_an_empty_directory_of_ours_is_taken_and_closed_to_others(tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    out = OutDir.create(d)
    out.close()
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700


def test_a_directory_with_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    d = tmp_path / "old-report"
    d.mkdir()
    (d / "summary.json").write_text("{}")
    with pytest.raises(OutDirError, match=rf"--out {d}: not empty"):
        OutDir.create(d)
    assert (d / "summary.json").read_text() == "{}"


@pytest.mark.parametrize("target", ["empty-dir", "dangling", "file"])
def test_a_symlink_at_the_path_is_refused_naming_it(tmp_path: Path, target: str) -> None:
    victim = tmp_path / "victim"
    if target == "empty-dir":
        victim.mkdir()
    elif target == "file":
        victim.write_text("keep")
    link = tmp_path / "out"
    link.symlink_to(victim)
    mode = os.stat(victim).st_mode if victim.exists() else None
    with pytest.raises(OutDirError, match=rf"--out {link}: is a symbolic link"):
        OutDir.create(link)
    if target == "dangling":
        assert not victim.exists()  # not made through the link
    else:
        assert os.stat(victim).st_mode == mode  # not chmod-ed through the link
    if target == "empty-dir":
        assert os.listdir(victim) == []
    if target == "file":
        assert victim.read_text() == "keep"


def test_a_file_at_the_path_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(OutDirError, match="exists and is not a directory"):
        OutDir.create(f)


def test_an_empty_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir()
    try:
        os.chown(d, 65534, 65534)  # nobody
    except PermissionError:
        not_here("chown to another user needs root")
    with pytest.raises(OutDirError, match=r"owned by uid 65534, not by this user"):
        OutDir.create(d)


def test_a_directory_swapped_for_a_symlink_after_it_was_made_is_not_followed(
        tmp_path: Path) -> None:
    out = OutDir.create(tmp_path / "out")
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        os.rename(out.path, tmp_path / "moved")
        (tmp_path / "out").symlink_to(elsewhere)
        with pytest.raises(CannotWrite, match=r"replaced since it was made"):
            out.write("summary.json", "{}")
        with pytest.raises(CannotWrite):
            out.subdir("runs", "x")
        assert os.listdir(elsewhere) == []
    finally:
        out.close()


def test_subdir_names_are_single_components(tmp_path: Path) -> None:
    out = OutDir.create(tmp_path / "out")
    try:
        assert out.subdir("runs", "steady-go") == out.path / "runs" / "steady-go"
        assert stat.S_IMODE(os.lstat(out.path / "runs" / "steady-go").st_mode) == 0o700
        for bad in ("..", "a/b", "", "."):
            with pytest.raises(ValueError, match="one path component"):
                out.subdir("runs", bad)
    finally:
        out.close()


def test_the_cli_refuses_a_symlinked_out_with_exit_2_before_any_daemon(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "target")
    r = subprocess.run([sys.executable, "-m", "sweeperd.cli", "loadtest", "--scenario",
                        "steady", "--policy", "none", "--out", str(link)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert f"--out {link}: is a symbolic link" in r.stderr
    assert os.listdir(tmp_path / "target") == []


# --- atomic report files, a full disk -----------------------------------------------------


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    atomic_write(p, "old")
    atomic_write(p, b"new" * 1000)
    assert p.read_bytes() == b"new" * 1000
    assert os.listdir(tmp_path) == ["f.txt"]
    assert stat.S_IMODE(os.lstat(p).st_mode) == 0o600


def test_atomic_write_never_writes_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious")
    (tmp_path / "f.txt").symlink_to(target)
    atomic_write(tmp_path / "f.txt", "report")  # replaces the link itself, not its target
    assert target.read_text() == "precious"
    assert not (tmp_path / "f.txt").is_symlink() and (tmp_path / "f.txt").read_text() == "report"


@contextlib.contextmanager
def _tiny_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        where.rmdir()
        not_here(f"cannot mount a tmpfs ({r.stderr.strip() or r.returncode}): needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def _fill(d: Path) -> None:
    """Every byte of the file system holding ``d`` taken (ENOSPC from now on)."""
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def _rows(n: int) -> list[dict[str, float]]:
    rows = []
    for i in range(n):
        r = dict.fromkeys(columns(), 0.0)
        r.update(scenario_elapsed_s=float(i + 1), kernel_backed_bytes=100.0 * MIB,
                 live_bytes=10.0 * MIB, retain_goal_bytes=22.0 * MIB, gc_cycles=float(i))
        rows.append(r)
    return rows


def _finish_into(out: OutDir, nrows: int) -> tuple[int, str, str, dict]:
    sc = scenarios.load("steady").scaled(0.01)
    p = plan(Options(scenarios=["steady"], policies=["none"], scale=0.01, out=out.path))
    results = [(p.runs[0], RunResult(sc.name, "none", ok=True, rows=_rows(nrows)))]
    vers = {"python": "3"}
    want = summarize_runs(p, results, "2026-11-30T00:00:00+00:00", vers)
    err, so = io.StringIO(), io.StringIO()
    rc = finish(p, out, results, "2026-11-30T00:00:00+00:00", vers, False, err, so)
    return rc, err.getvalue(), so.getvalue(), want


def test_a_full_disk_names_summary_json_and_the_summary_goes_to_stdout(tmp_path: Path) -> None:
    with _tiny_tmpfs(tmp_path / "mnt") as mnt:
        out = OutDir.create(mnt / "out")
        try:
            _fill(mnt)
            rc, err, so, want = _finish_into(out, 20)
            assert rc == EXIT_CANNOT_WRITE != 0
            assert (f"cannot write {mnt}/out/summary.json: No space left on device" in err), err
            assert json.loads(so) == json.loads(json.dumps(want))  # nothing lost
            assert os.listdir(out.path) == []  # no temp file, no torn summary
        finally:
            out.close()


def test_a_disk_that_fills_midway_names_the_file_and_keeps_summary_json_whole(
        tmp_path: Path) -> None:
    with _tiny_tmpfs(tmp_path / "mnt") as mnt:
        out = OutDir.create(mnt / "out")
        try:
            rc, err, so, _want = _finish_into(out, 2000)  # a CSV of ~1 MiB: cannot fit
            assert rc == EXIT_CANNOT_WRITE
            assert f"cannot write {mnt}/out/steady.none.r0.csv: No space left on device" in err
            assert json.loads((out.path / "summary.json").read_text()) == json.loads(so)
            assert sorted(os.listdir(out.path)) == ["summary.json"]
        finally:
            out.close()


def test_a_whole_report_is_written_when_there_is_room(tmp_path: Path) -> None:
    out = OutDir.create(tmp_path / "out")
    try:
        rc, err, _so, _ = _finish_into(out, 20)
        assert rc == 0 and err == ""
        names = set(os.listdir(out.path))
        assert {"summary.json", "steady.none.r0.csv", "report.html", "steady-memory.png"} <= names
        assert not [n for n in names if n.endswith(".tmp")]
        assert json.loads((out.path / "summary.json").read_text())["runs"][0]["policy"] == "none"
    finally:
        out.close()


# --- --replay: the cases, the limits ------------------------------------------------------


def _gc(n: int, t: float, start: float, live: float, prefix: str = "") -> str:
    return (f"{prefix}gc {n} @{t}s 1%: 0.1+1+0.1 ms clock, 0.1+0.1/1/1+0.1 ms cpu, "
            f"{start}->{start}->{live} MB, {live * 2} MB goal, 0 MB stacks, 0 MB globals, 8 P")


def _plan_of(tmp: Path, text: str, **kw: Any) -> Plan:
    f = tmp / "trace.txt"
    f.write_text(text)
    return plan(Options(replay=str(f), out=tmp / "never", **kw))


@pytest.mark.parametrize("name", ["replay-prefixed", "replay-excerpt"])
def test_the_shared_messy_traces_read_as_expected(name: str) -> None:
    want = json.loads((CASES / f"{name}.expected.json").read_text())
    cycles, note = replay.read_trace(str(CASES / f"{name}.gctrace"))
    assert [dict(n=c.n, t=c.t, h0=c.start_mib, live=c.live_mib) for c in cycles] == \
        want["cycles"]
    assert "lifetime" not in note  # one lifetime: no choice to name


def test_an_excerpt_lasts_its_span_not_since_at_zero_and_its_heap_fits_scaled() -> None:
    want = json.loads((CASES / "replay-excerpt.expected.json").read_text())
    p = plan(Options(replay=str(CASES / "replay-excerpt.gctrace"), scale=0.01))
    sc = p.scenarios[0]
    span = want["span_s"]
    assert span <= sc.seconds <= span + span / (len(want["cycles"]) - 1) + 1e-6
    assert sc.peak_live_mib == pytest.approx(want["peak_live_mb"] * 0.01)
    assert sc.peak_live_mib <= 0.9 * sc.scenario.heap_mib <= 0.9 * 1024


def test_an_excerpt_too_big_unscaled_names_its_peak_cycle() -> None:
    with pytest.raises(UsageError, match=r"gc 48222 @172823\.211s: live heap 22324 MB"):
        plan(Options(replay=str(CASES / "replay-excerpt.gctrace")))


def test_a_trace_spanning_days_is_refused_naming_the_cycle(tmp_path: Path) -> None:
    text = "\n".join(_gc(i, 1.0 + i * 20_000.0, 30, 10) for i in range(1, 8))
    with pytest.raises(UsageError, match=r"gc 6 @120001\.0s is 100000 s after the first cycle "
                                         r"\(gc 1 @20001\.0s\); a replay spans at most 86400 s"):
        _plan_of(tmp_path, text)


def test_a_huge_mb_figure_is_refused_naming_the_cycle(tmp_path: Path) -> None:
    text = "\n".join([_gc(1, 0.5, 30, 10), _gc(2, 1.0, 999999999999, 10), _gc(3, 1.5, 30, 10)])
    with pytest.raises(UsageError, match=r"gc 2 @1\.0s: heap at start 999999999999 MB"):
        _plan_of(tmp_path, text)


def test_an_allocation_rate_beyond_the_limit_names_the_cycle(tmp_path: Path) -> None:
    text = "\n".join([_gc(1, 0.5, 30, 10), _gc(2, 0.500000001, 16000000, 10),
                      _gc(3, 1.5, 30, 10)])
    with pytest.raises(UsageError, match=r"gc 2 @0\.500000001s: 15999990 MB allocated in"):
        _plan_of(tmp_path, text)


def test_a_restart_inside_the_file_replays_one_lifetime_and_says_which(tmp_path: Path) -> None:
    first = [_gc(i, i * 0.5, 40, 20) for i in range(1, 5)]
    second = [_gc(i, i * 0.5, 60, 30, prefix="Mar 01 10:00:00 h svc[9]: ")
              for i in range(1, 10)]
    p = _plan_of(tmp_path, "\n".join([*first, "panic: boom", *second, *first[:2]]))
    sc = p.scenarios[0]
    assert "lifetime 2 of 3" in sc.scenario.description and "gc 1..9" in sc.scenario.description
    assert sc.peak_live_mib == 30  # the second lifetime's alone: never stitched
    assert sc.seconds == pytest.approx(4.5)


def test_cycles_sharing_one_time_are_all_kept_with_their_garbage(tmp_path: Path) -> None:
    text = "\n".join([_gc(1, 1.0, 20, 10), _gc(2, 2.0, 30, 10), _gc(3, 2.0, 30, 10),
                      _gc(4, 3.0, 30, 10)])
    cycles = replay.parse_trace(text)
    assert [c.n for c in cycles] == [1, 2, 3, 4]
    sc = replay.to_scenario(cycles)
    garbage = sum(ph.seconds * ph.garbage_mib_s for ph in sc.phase)  # type: ignore[operator]
    assert garbage == pytest.approx(10 + 20 + 20 + 20)


HOSTILE = ["1e300", "-0", "-5", "NaN", "nan", "inf", "9" * 40, "0.000000001", "172800.5",
           "999999999.999999999", "86401", ""]


@st.composite
def _hostile_line(draw: st.DrawFn) -> str:
    """A gc line with any figure broken or extreme, or other text."""
    def figure(valid: st.SearchStrategy[str]) -> str:
        return draw(st.one_of(valid, st.sampled_from(HOSTILE)))

    n = figure(st.integers(0, 40).map(str))
    t = figure(st.floats(0, 1e9).map(lambda x: f"{x:.3f}"))
    a, b, c, g = (figure(st.integers(0, 10**12).map(str)) for _ in range(4))
    return draw(st.one_of(
        st.just(f"gc {n} @{t}s 5%: 1+1+1 ms clock, {a}->{b}->{c} MB, {g} MB goal, 8 P"),
        st.text(max_size=80),
        st.just("scav 0 KiB work, 1536 KiB total, 100% util")))


@st.composite
def _hostile_trace(draw: st.DrawFn) -> list[str]:
    """A real-looking trace (gc numbers counting up from anywhere, restarting at 1 now and
    then; times apart by nothing to days; MB from 0 to 12 digits; log prefixes), with
    hostile lines put anywhere."""
    n, t, out = draw(st.integers(1, 10**6)), draw(st.sampled_from([0.05, 1.0, 172800.0])), []
    for _ in range(draw(st.integers(0, 30))):
        if draw(st.integers(0, 15)) == 0:
            n, t = 1, 0.0  # a restart
        rare = draw(st.integers(0, 40)) == 0  # days apart, or a huge figure
        t += draw(st.sampled_from([90_000.0, 1e6] if rare else [0.0, 0.001, 0.25, 0.5, 2.0]))
        rare = draw(st.integers(0, 40)) == 0
        live = draw(st.integers(0, 10**12 if rare else 400))
        start = live + draw(st.integers(0, 10**12 if rare else 400))
        prefix = draw(st.sampled_from(["", "", "2026-03-01T10:00:00Z stderr F ",
                                       "Mar 01 10:00:00 h svc[9]: ", "xgc "]))
        out.append(f"{prefix}gc {n} @{t:.3f}s 3%: 0.1+1+0.1 ms clock, 0.2+0.1/1/1+0.1 ms cpu, "
                   f"{start}->{start}->{live} MB, {2 * live} MB goal, 0 MB stacks, 8 P"
                   + draw(st.sampled_from(["", " (forced)"])))
        n += 1
    for bad in draw(st.lists(_hostile_line(), max_size=5)):
        out.insert(draw(st.integers(0, len(out))), bad)
    return out


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(lines=_hostile_trace(),
       scale=st.sampled_from([1.0, 0.01, 1e-6, 1000.0]),
       heap=st.none() | st.integers(1, 16384))
def test_hostile_replays_make_a_plan_the_daemon_accepts_or_a_usage_error(
        lines: list[str], scale: float, heap: int | None) -> None:
    with tempfile.TemporaryDirectory() as d:
        try:
            p = _plan_of(Path(d), "\n".join(lines), scale=scale, heap_mib=heap)
        except UsageError as e:
            assert str(e)
            return
    sc = p.scenarios[0]
    assert 0 < sc.seconds <= replay.MAX_REPLAY_S + replay.MAX_REPLAY_S  # span + start-up
    assert all(0 < ph.seconds <= 86_400 and math.isfinite(ph.seconds) for ph in sc.phase)
    assert sc.peak_live_mib <= 0.9 * sc.scenario.heap_mib <= 0.9 * 16384
    again = scenarios.parse(sc.to_toml())  # what every child reads: accepted
    assert again.seconds == pytest.approx(sc.seconds)
