"""``sweeperd loadtest``'s inputs, checked before any daemon starts: whatever the flags hold,
the answer is a plan or a UsageError naming the flag (hypothesis), never anything else."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.loadtest.main import Options, UsageError, parse_policies, plan
from sweeperd.pacing.names import POLICIES


def test_defaults_are_every_shipped_scenario_and_every_policy(tmp_path: Path) -> None:
    p = plan(Options(out=tmp_path))
    assert {s.name for s in p.scenarios} >= {"steady", "spike-then-idle", "sawtooth",
                                              "fragmentation", "memory-limit-squeeze",
                                              "alloc-storm"}
    assert p.policies == list(POLICIES) == [s.policy for s in parse_policies(None)]
    assert plan(Options()).out.name.startswith("loadtest-")


def test_policies_keep_their_order_and_drop_repeats() -> None:
    assert [s.policy for s in parse_policies("eager, go,eager")] == ["eager", "go"]
    with pytest.raises(UsageError, match="--policy: no policy"):
        parse_policies(" , ")


@settings(max_examples=300, deadline=None)
@given(policy=st.text(max_size=60),
       scale=st.floats(allow_nan=True, allow_infinity=True),
       heap=st.none() | st.integers(min_value=-10**20, max_value=10**20),
       scenario=st.sampled_from(["steady", "alloc-storm", "nope", "", "../../etc/passwd"]))
def test_fuzzed_flags_make_a_plan_or_a_usage_error(policy: str, scale: float,
                                                    heap: int | None, scenario: str) -> None:
    try:
        o = Options(scenarios=[scenario] if scenario else [], policies=policy,
                    heap_mib=heap, scale=scale, out=Path("/nonexistent/never-written"))
        p = plan(o)
    except UsageError as e:
        assert str(e)
        return
    assert math.isfinite(scale) and 0 < scale <= 1000
    assert all(s.peak_live_mib <= 0.9 * s.scenario.heap_mib <= 0.9 * 16384 for s in p.scenarios)
    assert set(p.policies) <= {*POLICIES, "go-runtime"}


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
               min_size=1, max_size=40))
def test_a_run_config_names_its_scenario_file_whatever_the_path(name: str) -> None:
    """The run directory comes from --out: quotes, backslashes and newlines in it must not
    break (or inject into) the config the child daemon reads."""
    import tomllib

    from sweeperd.loadtest.runner import config_text
    from sweeperd.workload.scenario import load

    path = Path("/tmp") / name / "scenario.toml"
    data = tomllib.loads(config_text(path, "eager", load("steady")))
    assert data["mutators"] == {"scenario": str(path)}
    assert data["scavenger"]["policy"] == "eager"
    assert data["control"] == {"addr": "ipc://auto", "admin": False}  # read-only child


def test_a_replay_of_more_cycles_than_phases_can_be_repeated(tmp_path: Path) -> None:
    """Thinned to leave a phase for the hold that shifts each repeat's start."""
    lines = [f"gc {i} @{i * 0.05:.3f}s 1%: x, 30->31->10 MB, 20 MB goal, 2 P"
             for i in range(1, 1501)]
    trace = tmp_path / "busy.gctrace"
    trace.write_text("\n".join(lines))
    p = plan(Options(replay=str(trace), policies="go", repeat=2, seed=1,
                     out=tmp_path / "out"))
    assert len(p.runs) == 2 and p.runs[1].start_shift_s > 0


def test_a_policys_choice_and_special_values_are_knobs() -> None:
    """``on`` (a choice) and the allocators' own 0 / -1 are accepted as ``--policy`` settings,
    reach the run's ``[scavenger.<policy>]`` table, and anything else is refused by name."""
    from sweeperd.loadtest.runner import config_text
    from sweeperd.loadtest.runspec import policy_defaults, settings
    from sweeperd.workload.scenario import load

    specs = parse_policies("jemalloc-decay:on=activity|timer;dirty_decay_ms=-1|0,"
                           "mimalloc-delay:purge_delay_ms=0,jemalloc-hpa:dirty_mult=-1;on=activity,"
                           "tcmalloc-background:release_rate_bytes_s=1048576")
    got = {(s.policy, tuple(sorted(s.given.items()))) for s in specs}
    assert got == {("jemalloc-decay", (("dirty_decay_ms", d), ("on", on)))
                   for d in (-1, 0) for on in ("activity", "timer")} | {
        ("mimalloc-delay", (("purge_delay_ms", 0),)),
        ("jemalloc-hpa", (("dirty_mult", -1.0), ("on", "activity"))),
        ("tcmalloc-background", (("release_rate_bytes_s", 1048576),))}
    assert len(specs) == 7
    assert policy_defaults("jemalloc-hpa") == {"dirty_mult": 0.25,
                                               "min_purge_interval_ms": 5000, "on": "timer"}
    sc = load("steady")
    spec = next(s for s in specs if s.given == {"on": "activity", "dirty_decay_ms": -1})
    text = config_text(Path("/tmp/x.toml"), "jemalloc-decay", sc,
                       settings=settings(sc, spec), given=spec.given)
    assert '[scavenger.jemalloc-decay]\ndirty_decay_ms = -1\non = "activity"' in text
    for bad, needle in [("jemalloc-decay:on=sometimes", "on must be timer or activity"),
                        ("jemalloc-decay:dirty_decay_ms=-5",
                         "-1 (never), 0 (at once) or 1..3600000"),
                        ("mimalloc-delay:purge_delay_ms=-2", "-1 (never), 0 (at once)"),
                        ("tcmalloc-background:on=activity", "on"),
                        ("gperftools-rate:on=activity", "on")]:
        with pytest.raises(UsageError, match=re.escape(needle)):
            parse_policies(bad)


def test_the_real_allocators_are_runs_with_their_own_knobs_and_no_gc(tmp_path: Path) -> None:
    """--c-reference adds a row per allocator at its defaults; --policy takes the allocators
    with their options (a grid too); a GC knob never reaches a malloc heap."""
    specs = parse_policies("none,c-jemalloc:dirty_decay_ms=0|-1", ["gogc=50|100"],
                           c_reference=["glibc", " jemalloc", "glibc"])
    labels = [s.label() for s in specs]
    assert labels == ["none gogc=50", "none gogc=100", "c-jemalloc dirty_decay_ms=0",
                      "c-jemalloc dirty_decay_ms=-1", "c-glibc", "c-jemalloc"]
    p = plan(Options(scenarios=["steady"], policies="c-tcmalloc:release_rate=10",
                     c_reference=["mimalloc"], out=tmp_path / "o"))
    (tc, mi) = p.runs
    assert tc.settings == {"release_rate": 10.0, "aggressive_decommit": None}
    assert mi.settings == {"purge_delay": None}  # None: mimalloc's own default
    assert "gogc" not in tc.settings and tc.run_id == "steady.c-tcmalloc.release_rate=10.r0"
    for bad, says in [("c-glibc:arena_max=0", "arena_max must be an integer within 1..65536"),
                      ("c-jemalloc:background_thread=yes", "true or false"),
                      ("c-hoard", "unknown policy 'c-hoard'")]:
        with pytest.raises(UsageError, match=re.escape(says)):
            parse_policies(bad)


_NAMES = st.sampled_from(["c-glibc", "c-jemalloc", "c-tcmalloc", "c-mimalloc", "none",
                          "jemalloc-decay", "c-", "c-hoard", "C-JEMALLOC"])
_KEYS = st.sampled_from(["dirty_decay_ms", "muzzy_decay_ms", "background_thread", "narenas",
                         "release_rate", "aggressive_decommit", "purge_delay", "trim_threshold",
                         "mmap_threshold", "arena_max", "gogc", "on", ""])
_VALUES = st.one_of(st.sampled_from(["-1", "0", "1", "true", "false", "nan", "inf", "1e3",
                                     "3600001", "-2", "1099511627777", "", "½", "0x10"]),
                    st.text(max_size=8))


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.tuples(_NAMES, st.lists(st.tuples(_KEYS, _VALUES), max_size=3)),
                        min_size=1, max_size=4),
       c_ref=st.lists(st.sampled_from(["glibc", "jemalloc", "tcmalloc", "mimalloc", "", "x",
                                       " jemalloc "]), max_size=4))
def test_fuzzed_allocator_entries_make_runs_or_a_usage_error(
        entries: list[tuple[str, list[tuple[str, str]]]], c_ref: list[str]) -> None:
    """Allocator rows and their knobs, shaped as users type them: a plan whose every c-* run
    has only its allocator's options, each a JSON scalar in range, or a UsageError; nothing
    else escapes."""
    text = ",".join(name + (":" + ";".join(f"{k}={v}" for k, v in kv) if kv else "")
                    for name, kv in entries)
    try:
        specs = parse_policies(text, c_reference=[c for c in c_ref if c.strip()])
    except UsageError as e:
        assert str(e) and "\n" not in str(e)
        return
    from sweeperd.loadtest import cref

    for s in specs:
        if s.policy.startswith("c-"):
            knobs = cref.allocator_of(s.policy).knobs
            for k, v in s.overrides:
                assert k in knobs
                kn = knobs[k]
                if kn.choices:
                    assert v in kn.choices
                else:
                    assert isinstance(v, int | float) and kn.lo <= v <= kn.hi
