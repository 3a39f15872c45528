"""Repeats judged (:mod:`sweeperd.loadtest.compare`): medians and their CIs, the U test,
fidelity pairing, the recommendation, on plain-dict summaries in the run-row contract's shape;
the report's new sections in headless Chromium; one end-to-end run with the real daemon and
the real Go runtime."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.loadtest import compare, report

from . import browser
from .test_loadtest import SHORT, _need_go

GIB = 1 << 30
finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


def row(scenario: str, policy: str, repeat: int, overrides: dict[str, Any] | None = None,
        ok: bool = True, **figs: Any) -> dict[str, Any]:
    """A run row in the contract's shape (issue 18's shared notes)."""
    overrides = overrides or {}
    settings_ = {"gogc": 100, "memory_limit_mib": 0, "version": "1.21"}
    if policy == "go-runtime":
        settings_.update(free_os_memory_every_s=0.0, madvdontneed=None)
    settings_.update(overrides)
    gid = ".".join([scenario, policy, *(f"{k}={overrides[k]}" for k in sorted(overrides))])
    base = dict.fromkeys(compare.FIGURES)
    base.update(figs)
    return {"scenario": scenario, "policy": policy, "ok": ok, **base, "settings": settings_,
            "overrides": overrides, "repeat": repeat, "start_shift_s": 0.1 * repeat,
            "group_id": gid, "run_id": f"{gid}.r{repeat}"}


# --- medians and confidence intervals -------------------------------------------------------

@given(st.lists(finite, min_size=1, max_size=40))
def test_the_ci_contains_the_median_and_is_made_of_samples(xs: list[float]) -> None:
    med, lo, hi = compare.median_ci(xs)
    assert med is not None and min(xs) <= med <= max(xs)
    if len(xs) < 6:
        assert lo is None and hi is None  # even [min, max] covers < 95% (benchstat: n >= 6)
    else:
        assert lo is not None and hi is not None
        assert lo <= med <= hi and lo in xs and hi in xs


def test_the_ci_is_the_binomial_order_statistics() -> None:
    # n = 6: [x(1), x(6)] covers 1 - 2/64 = 96.9%; n = 9: [x(2), x(8)] covers 96.1%
    # (x(3), x(7) would cover only 82%); n = 20: [x(6), x(15)] covers 95.9%
    assert compare.median_ci([5, 1, 4, 2, 6, 3]) == (3.5, 1.0, 6.0)
    assert compare.median_ci(list(range(1, 10))) == (5.0, 2.0, 8.0)
    assert compare.median_ci(list(range(1, 21))) == (10.5, 6.0, 15.0)
    assert compare.median_ci([]) == (None, None, None)
    assert compare.median_ci([7.0]) == (7.0, None, None)


@given(st.lists(finite, min_size=1, max_size=30), st.randoms())
def test_the_median_and_ci_do_not_depend_on_order(xs: list[float], rnd: random.Random) -> None:
    ys = list(xs)
    rnd.shuffle(ys)
    assert compare.median_ci(xs) == compare.median_ci(ys)


# --- significance -----------------------------------------------------------------------------

def test_too_few_samples_are_never_significant() -> None:
    assert compare.min_p_value(3, 3) == pytest.approx(0.1)
    assert not compare.significant([1, 2, 3], [100, 200, 300])  # as far apart as can be
    assert compare.significant([1, 2, 3, 4], [100, 200, 300, 400])  # p = 2/70
    assert not compare.significant([], [1, 2, 3, 4, 5])


def test_identical_samples_do_not_differ_and_separate_ones_do() -> None:
    a = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    assert not compare.significant(a, list(a))
    assert not compare.significant([5.0] * 6, [5.0] * 6)
    assert compare.significant(a, [x + 100 for x in a])
    p = compare.u_test(a, [x + 100 for x in a])
    assert p is not None and p == pytest.approx(2 / 924)


@given(st.lists(finite, min_size=1, max_size=12), st.lists(finite, min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)
def test_significance_is_symmetric(a: list[float], b: list[float]) -> None:
    assert compare.significant(a, b) == compare.significant(b, a)


# --- groups -----------------------------------------------------------------------------------

def test_groups_of_today_s_rows_are_n_1_with_null_ci() -> None:
    runs = [{"scenario": "s", "policy": "go", "ok": True, "excess_byte_seconds": 5.0,
             "gc_cycles": 3, "peak_backed_bytes": None},
            {"scenario": "s", "policy": "go-runtime", "ok": True, "excess_byte_seconds": 4.0,
             "gc_cycles": 3}]
    gs = compare.groups(runs)
    assert set(gs) == {"s.go", "s.go-runtime"}
    g = gs["s.go"]
    assert g["n"] == 1 and g["run_ids"] == ["s.go"]
    assert g["figures"]["excess_byte_seconds"] == {"median": 5.0, "ci95_low": None,
                                                   "ci95_high": None, "n": 1}
    assert g["figures"]["peak_backed_bytes"]["median"] is None  # null stays null, not 0
    assert g["figures"]["excess_free_byte_seconds"]["median"] is None  # absent (before w5)
    json.dumps(compare.analyse(runs))  # JSON-able as it is


def test_failed_runs_and_null_figures_are_left_out_of_the_statistics() -> None:
    runs = [row("s", "go", i, excess_byte_seconds=float(i)) for i in range(6)]
    runs.append(row("s", "go", 6, ok=False, excess_byte_seconds=1e18))
    runs.append(row("s", "go", 7, excess_byte_seconds=None))
    g = compare.groups(runs)["s.go"]
    assert g["n"] == 7 and len(g["run_ids"]) == 8
    f = g["figures"]["excess_byte_seconds"]
    assert f["n"] == 6 and f["median"] == 2.5 and f["ci95_high"] == 5.0


@given(st.lists(st.tuples(st.sampled_from(["go", "go-runtime", "none"]),
                          st.sampled_from([50, 100, 200]), finite), min_size=1, max_size=20),
       st.randoms())
@settings(max_examples=40, deadline=None)
def test_the_analysis_does_not_depend_on_row_order(spec: list[tuple[str, int, float]],
                                                   rnd: random.Random) -> None:
    runs = [row("s", p, i, {"gogc": g} if g != 100 else {}, excess_byte_seconds=x,
                gc_cycles=abs(x)) for i, (p, g, x) in enumerate(spec)]
    shuffled = list(runs)
    rnd.shuffle(shuffled)
    assert compare.analyse(runs) == compare.analyse(shuffled)


# --- fidelity ---------------------------------------------------------------------------------

def _figs(k: float) -> dict[str, Any]:
    return {"peak_backed_bytes": 512e6 * k, "mean_backed_bytes": 300e6 * k,
            "excess_byte_seconds": 5e9 * k, "seconds_to_retain_goal": 3.0 * k,
            "gc_cycles": round(20 * k), "alloc_bytes_per_s": 64e6 * k}


def test_fidelity_pairs_equal_settings_and_identical_groups_give_ratio_1() -> None:
    runs = []
    for gogc in (50, 100, 200):
        ov = {} if gogc == 100 else {"gogc": gogc}
        runs += [row("spike", "go", i, ov, **_figs(gogc / 100)) for i in range(5)]
        runs += [row("spike", "go-runtime", i, ov, **_figs(gogc / 100)) for i in range(5)]
    fid = compare.fidelity(compare.groups(runs))
    assert [(e["model_group"], e["real_group"]) for e in fid] == [
        ("spike.go", "spike.go-runtime"), ("spike.go.gogc=200", "spike.go-runtime.gogc=200"),
        ("spike.go.gogc=50", "spike.go-runtime.gogc=50")]
    for e in fid:
        assert all(f["ratio"] == 1.0 and f["within"] is not False
                   for f in e["figures"].values())
        assert e["goal_met"] and e["enough_repeats"] and e["n_model"] == e["n_real"] == 5


def test_fidelity_judges_each_figure_against_the_issue_s_goal() -> None:
    model = _figs(1.0) | {"excess_byte_seconds": 5e9 * 1.3, "gc_cycles": 26}  # +30% both
    runs = [row("spike", "go", i, **model) for i in range(3)]
    runs += [row("spike", "go-runtime", i, **_figs(1.0)) for i in range(3)]
    (e,) = compare.fidelity(compare.groups(runs))
    f = e["figures"]
    assert f["excess_byte_seconds"]["ratio"] == pytest.approx(1.3)
    assert f["excess_byte_seconds"]["within"] is False  # ±25%
    assert f["gc_cycles"]["within"] is True  # ±30%
    assert f["peak_backed_bytes"]["within"] is True
    assert f["mean_backed_bytes"]["within"] is None  # reported, no goal
    assert not e["goal_met"] and not e["enough_repeats"]  # 3 repeats < 5


def test_fidelity_does_not_pair_different_settings_or_non_default_knobs() -> None:
    runs = [row("spike", "go", 0, {"gogc": 50}, **_figs(1)),
            row("spike", "go-runtime", 0, {"gogc": 200}, **_figs(1)),
            row("spike", "go-runtime", 0, {"gogc": 50, "madvdontneed": 1}, **_figs(1)),
            row("spike", "go-runtime", 0, {"gogc": 50, "free_os_memory_every_s": 10.0},
                **_figs(1)),
            row("other", "go-runtime", 0, {"gogc": 50}, **_figs(1)),
            row("spike", "go-runtime", 0, {"gogc": 50, "version": "1.19"}, **_figs(1)),
            row("spike", "go", 0, {"gogc": 50, "scavenge_percent": 5}, **_figs(1))]
    assert compare.fidelity(compare.groups(runs)) == []


@pytest.mark.parametrize(("model", "real", "pairs"), [
    ("1.21", "1.21", True), ("1.21", "1.21.13", True), ("1.21", "1.25.1", True),
    ("1.19", "1.19", True), ("1.19", "1.20.14", True), ("1.19", "1.21", False),
    ("1.21", "1.19", False), ("1.21", "1.20", False), ("1.19", "1.18", False),
    ("1.21", "tip", False), ("1.21", None, False)])
def test_fidelity_pairs_a_model_version_with_the_go_releases_it_follows(
        model: str, real: str | None, pairs: bool) -> None:
    runs = [row("s", "go", 0, {"version": model}, **_figs(1)),
            row("s", "go-runtime", 0, {"version": real}, **_figs(1))]
    fid = compare.fidelity(compare.groups(runs))
    assert len(fid) == int(pairs)
    if pairs:
        assert fid[0]["settings"]["version"] == model and fid[0]["real_version"] == real


def test_fidelity_ratios_with_null_or_zero_figures() -> None:
    real = _figs(1) | {"seconds_to_retain_goal": None, "gc_cycles": 0}
    runs = [row("s", "go", 0, **_figs(1)), row("s", "go-runtime", 0, **real)]
    (e,) = compare.fidelity(compare.groups(runs))
    assert e["figures"]["seconds_to_retain_goal"]["ratio"] is None
    assert e["figures"]["gc_cycles"]["ratio"] is None and e["within_goal"] is None
    assert compare.ratio(0, 0) == 1.0


# --- the recommendation -----------------------------------------------------------------------

# --- the lab's allocator policies against the real allocators (issue 20) -------------------

def _afigs(k: float) -> dict[str, Any]:
    return {"excess_free_byte_seconds": 4e9 * k, "end_backed_bytes": 40e6 * k,
            "peak_backed_bytes": 600e6, "free_hold_seconds": 9.0 * k,
            "seconds_to_retain_goal": None}


def test_each_lab_policy_pairs_with_the_allocator_it_is_named_after() -> None:
    runs = []
    for lab, real in compare.NAMESAKES.items():
        runs += [row("spike", lab, i, **_afigs(1.0)) for i in range(5)]
        runs += [row("spike", real, i, **_afigs(1.0)) for i in range(5)]
    runs += [row("spike", "eager", 0, **_afigs(1.0)), row("other", "c-jemalloc", 0)]
    fid = compare.allocator_fidelity(compare.groups(runs))
    assert sorted((e["lab_policy"], e["real_policy"]) for e in fid) == sorted(
        compare.NAMESAKES.items())  # eager has no namesake; another scenario never pairs
    for e in fid:
        assert e["kind"] == "allocator" and e["goal_met"] and e["n_model"] == 5
        assert all(f["ratio"] == 1.0 for f in e["figures"].values() if f["ratio"] is not None)
    assert compare.analyse(runs)["fidelity"] == fid  # in summary.json's "fidelity"


def test_an_allocator_pair_is_judged_on_the_free_share_and_the_end_backing() -> None:
    runs = [row("s", "jemalloc-decay", i, **(_afigs(1.0) | {"excess_free_byte_seconds": 4e9 * 1.4,
                                                         "end_backed_bytes": 40e6 * 0.75}))
            for i in range(5)]
    runs += [row("s", "c-jemalloc", i, **_afigs(1.0)) for i in range(5)]
    (e,) = compare.allocator_fidelity(compare.groups(runs))
    f = e["figures"]
    assert f["excess_free_byte_seconds"]["ratio"] == pytest.approx(1.4)
    assert f["excess_free_byte_seconds"]["within"] is False  # ±30%
    assert f["end_backed_bytes"]["within"] is True
    assert f["peak_backed_bytes"]["within"] is None and f["free_hold_seconds"]["goal"] is None
    assert not e["goal_met"] and e["within_goal"] is False


@pytest.mark.parametrize(("lab", "real", "pairs"), [
    ({}, {}, True),  # both at their defaults
    ({"dirty_decay_ms": 1000}, {"dirty_decay_ms": 1000}, True),  # the same knob, same value
    ({"dirty_decay_ms": 1000}, {}, False),
    ({}, {"dirty_decay_ms": 1000}, False),
    ({"on": "activity"}, {}, True),  # the lab's clock is what the pair shows
    ({}, {"background_thread": "true"}, True),  # reported beside it, not matched
    ({}, {"muzzy_decay_ms": 1000}, False),  # an option the lab has no twin for
    ({"gogc": 50}, {}, False),  # the GC's knobs: a malloc heap has no twin for them
    ({"memory_limit_mib": 64, "on": "activity"}, {}, False),
    ({"dirty_decay_ms": 10000}, {}, True),  # given at its default is the default
    ({}, {"dirty_decay_ms": 10000}, True),  # jemalloc's own default, given
    ({}, {"background_thread": "false", "muzzy_decay_ms": 0}, True),
])
def test_allocator_pairs_need_the_same_twin_knobs(lab: dict[str, Any], real: dict[str, Any],
                                                  pairs: bool) -> None:
    runs = [row("s", "jemalloc-decay", 0, lab, **_afigs(1.0)),
            row("s", "c-jemalloc", 0, real, **_afigs(1.0))]
    fid = compare.allocator_fidelity(compare.groups(runs))
    assert bool(fid) is pairs, fid


def _grid(n: int, gogc50_excess: float, gogc50_cycles: float,
          policy: str = "go-runtime") -> list[dict[str, Any]]:
    rnd = random.Random(1)
    runs = []
    for i in range(n):
        runs.append(row("spike", policy, i, excess_byte_seconds=10e9 + rnd.random() * 1e8,
                        gc_cycles=20, scavenger_cpu_seconds=None))
        runs.append(row("spike", policy, i, {"gogc": 50},
                        excess_byte_seconds=gogc50_excess + rnd.random() * 1e8,
                        gc_cycles=gogc50_cycles, scavenger_cpu_seconds=None))
        runs.append(row("spike", policy, i, {"memory_limit_mib": 768},
                        excess_byte_seconds=6e9 + rnd.random() * 1e8, gc_cycles=21))
    return runs


def test_the_recommendation_ranks_significant_settings_within_the_cpu_bound() -> None:
    rec = compare.analyse(_grid(6, gogc50_excess=5e9, gogc50_cycles=40))["recommendation"]
    assert [e["apply"] for e in rec["entries"]] == ["GOMEMLIMIT=768MiB on Go 1.21"]
    (e,) = rec["entries"]
    assert e["p_value"] < 0.05 and e["excess_ratio"] < 0.65
    assert e["cpu_ratios"] == {"gc_cycles": pytest.approx(21 / 20)}
    why = {c["group_id"]: c["why"] for c in rec["considered"]}
    assert "gc_cycles 2.00x" in why["spike.go-runtime.gogc=50"]  # more excess cut, more CPU


def test_the_recommendation_widens_with_the_bound_and_ranks_by_excess() -> None:
    rec = compare.recommendation(*_both(_grid(6, 5e9, 40)), cpu_bound=1.5)
    assert [e["group_id"] for e in rec["entries"]] == ["spike.go-runtime.gogc=50",
                                                       "spike.go-runtime.memory_limit_mib=768"]
    assert rec["entries"][0]["apply"] == "GOGC=50 on Go 1.21"


def _both(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return compare.groups(runs), runs


def test_nothing_significant_is_said_plainly() -> None:
    rec = compare.analyse(_grid(3, 5e9, 20))["recommendation"]  # 3 vs 3: p >= 0.1
    assert rec["entries"] == []
    assert rec["note"].startswith("Nothing is significant")
    assert all("cannot reach" in c["why"] for c in rec["considered"])
    solo = compare.analyse([row("s", "go", 0, excess_byte_seconds=1.0)])["recommendation"]
    assert solo["entries"] == [] and solo["note"].startswith("Nothing to recommend")


def test_the_model_s_settings_are_recommended_as_modelled_and_other_policies_never() -> None:
    runs = _grid(6, 5e9, 20, policy="go")
    runs += [row("spike", "jemalloc-decay", i, {"dirty_decay_ms": 0}, excess_byte_seconds=1.0)
             for i in range(6)]
    rec = compare.analyse(runs)["recommendation"]
    assert {e["policy"] for e in rec["entries"]} == {"go"}
    assert all(e["apply"].endswith("(modelled by the go policy)") for e in rec["entries"])


@pytest.mark.parametrize("settings_, text", [
    ({"gogc": "off", "memory_limit_mib": 512}, "GOGC=off GOMEMLIMIT=512MiB"),
    ({"gogc": 100, "madvdontneed": 1, "version": "1.19"},
     "GODEBUG=madvdontneed=1 on Go 1.19"),
    ({"gogc": 100, "free_os_memory_every_s": 10.0},
     "a goroutine calling debug.FreeOSMemory() every 10 s"),
    ({}, "(Go's defaults)"),
])
def test_apply_text_names_go_s_own_knobs(settings_: dict[str, Any], text: str) -> None:
    assert compare.apply_text("go-runtime", settings_) == text


@given(st.lists(st.tuples(finite, finite), max_size=30))
def test_the_pareto_front_is_exactly_the_undominated_points(
        pts: list[tuple[float, float]]) -> None:
    front = set(compare.pareto_front(pts))
    for i, (x, y) in enumerate(pts):
        dominated = any(a <= x and b <= y and (a, b) != (x, y) for a, b in pts)
        assert (i in front) == (not dominated)
    if pts:
        assert front


# --- the report, in a browser -----------------------------------------------------------------

HARNESS = """<!doctype html><html><body><div id="result">waiting</div>
<iframe id="f" src="report.html" width="1200" height="800"></iframe>
<script>
window.addEventListener("load", () => {
  const d = document.getElementById("f").contentDocument;
  const img = [...d.images].find(i => i.alt === "pareto");
  const ok = img && img.complete && img.naturalWidth > 500 && img.naturalHeight > 200;
  const rec = d.querySelector("table.recommendation");
  const fid = d.querySelector("table.fidelity");
  document.getElementById("result").textContent = "pareto " + (ok ? "decoded" : "missing")
    + "; recommendation rows " + (rec ? rec.rows.length - 1 : -1)
    + "; fidelity rows " + (fid ? fid.rows.length - 1 : -1);
});
</script></body></html>"""


def _open_in_chromium(out: Path, tmp_path: Path) -> str:
    (out / "harness.html").write_text(HARNESS)
    return browser.dump_dom(out, "harness.html", tmp_path)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"started": "now", "runs": runs, "machine": {}, "versions": {},
            **compare.analyse(runs)}


def test_the_report_shows_the_pareto_plot_and_the_tables_in_chromium(tmp_path: Path) -> None:
    runs = _grid(6, 5e9, 40)
    for r in runs:
        r.update(cpu_seconds_per_gib_released=0.2 + r["repeat"] / 100,
                 alloc_latency_p99_seconds=1e-4 * (1 + r["repeat"]))
    runs += [row("spike", "go", i, **_figs(1 + i / 50), cpu_seconds_per_gib_released=0.3,
                 alloc_latency_p99_seconds=2e-4) for i in range(6)]
    runs += [row("spike", "go-runtime", i + 10, **_figs(1.0)) for i in range(6)]
    out = tmp_path / "report"
    out.mkdir()
    summary = _summary(runs)
    report.write_html(out / "report.html", summary, {}, {})
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    dom = _open_in_chromium(out, tmp_path)
    assert "pareto decoded; recommendation rows 1; fidelity rows 1" in dom, dom[-3000:]


def test_an_old_summary_gets_no_new_sections(tmp_path: Path) -> None:
    report.write_html(tmp_path / "report.html",
                      {"started": "x", "runs": [], "machine": {}, "versions": {}}, {}, {})
    assert "What to change" not in (tmp_path / "report.html").read_text()
    assert not (tmp_path / "pareto.png").exists()


# --- end to end with today's main ---------------------------------------------------------

@pytest.mark.timeout(400)
def test_a_go_reference_run_gets_groups_and_a_fidelity_entry(tmp_path: Path) -> None:
    _need_go()
    (tmp_path / "short.toml").write_text(SHORT)
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "-m", "sweeperd.cli", "loadtest", "--scenario",
                        str(tmp_path / "short.toml"), "--policy", "go", "--go-reference",
                        "--out", str(out), "--json"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    assert json.loads((out / "summary.json").read_text())["groups"] == summary["groups"]
    gs = summary["groups"]
    assert len(gs) == 2 and {g["policy"] for g in gs.values()} == {"go", "go-runtime"}
    for g in gs.values():
        assert g["n"] == 1
        ex = g["figures"]["excess_byte_seconds"]
        assert ex["median"] is not None and ex["ci95_low"] is None and ex["ci95_high"] is None
    (e,) = summary["fidelity"]
    assert gs[e["model_group"]]["policy"] == "go" and gs[e["real_group"]]["policy"] == \
        "go-runtime"
    assert e["figures"]["peak_backed_bytes"]["ratio"] > 0 and not e["goal_met"]  # n = 1
    # the default model (1.21) against the default real row: a release it follows
    assert e["settings"]["version"] == "1.21" and e["real_version"] >= "1.21"
    assert summary["recommendation"]["entries"] == []
    html_ = (out / "report.html").read_text()
    assert "The model checked against the real runtime" in html_ and "What to change" in html_
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_explicit_gogc_100_is_the_default_not_a_candidate() -> None:
    runs = [row("s", "go-runtime", i, {"gogc": 100}, excess_byte_seconds=10.0 + i,
                gc_cycles=20) for i in range(4)]
    runs += [row("s", "go-runtime", i, {"gogc": 200}, excess_byte_seconds=1.0 + i,
                 gc_cycles=10) for i in range(4)]
    rec = compare.analyse(runs)["recommendation"]
    assert [c["group_id"] for c in rec["considered"]] == ["s.go-runtime.gogc=200"]
    (e,) = rec["entries"]
    assert e["default_group"] == "s.go-runtime.gogc=100" and e["apply"] == "GOGC=200 on Go 1.21"


def test_a_pareto_plot_of_groups_without_the_costs_still_decodes() -> None:
    runs = [row("s", "go-runtime", 0, excess_byte_seconds=1e9)]  # Go exposes neither cost
    png = report.plot_pareto(compare.groups(runs))
    import matplotlib.image

    img = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert img.shape[0] >= 400 and img.shape[1] >= 1000
