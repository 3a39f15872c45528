"""Repeats judged: groups, medians with 95% confidence intervals, the model checked against Go,
and a recommendation a Go engineer can apply (issue 18).

Theory of operation
-------------------
Pure functions over ``summary.json``'s ``"runs"`` rows (plain dicts, the run-row contract of
issue 18); nothing here reads a file, a clock or a process.

* **Groups.**  Rows with the same ``group_id`` (scenario, policy, overrides) are repeats of one
  configuration.  A row from before the contract (no ``group_id``) is its own group
  ``<scenario>.<policy>``.  Each figure of :data:`FIGURES` gets the median of the group's ok
  runs that measured it and a 95% confidence interval of that median by order statistics
  (binomial, distribution-free: Lehmann, *Nonparametrics*, 1975, pp. 182-183; the method of
  Go's ``benchstat``, ``golang.org/x/perf/benchmath``'s ``AssumeNothing``): the interval
  ``[x_(k), x_(n-k+1)]`` with the largest ``k`` whose coverage
  ``1 - 2·P(Binomial(n, 1/2) <= k-1)`` is at least 95%.  It exists from ``n = 6`` on (at
  ``n = 5`` even ``[min, max]`` covers only 93.75%): below, the interval is null, as benchstat
  prints ``∞`` and "need >= 6 samples".
* **Significance.**  Two groups differ on a figure when the two-sided Mann-Whitney U test
  (``scipy.stats.mannwhitneyu``; benchstat's test) gives ``p < alpha`` (0.05).  As in
  benchstat, too few samples cannot be significant: when even the most extreme ordering of the
  two samples could not reach ``alpha`` (the exact test's smallest p-value,
  ``2 / C(n+m, n)``, is ``>= alpha``), the answer is "not significant" whatever the data: at
  ``alpha = 0.05`` that needs 4 runs on each side (3 + 3 gives at best p = 0.1), or 3 against 6
  and more.
* **Fidelity.**  Each ``go`` group (the model) is paired with the ``go-runtime`` group (the
  real runtime) of the same scenario whose *matching settings* are equal: ``gogc``,
  ``memory_limit_mib`` and ``version`` (a key absent on both sides matches), the model group
  carrying no other override (a policy knob has no Go twin), the real group's ``version``
  read as the model version that follows it (:func:`runspec.model_version`: 1.21 and later
  pair with the model's 1.21, 1.19 and 1.20 with its 1.19), and the real group having its
  extra knobs at their defaults (``free_os_memory_every_s`` 0 or absent, ``madvdontneed`` null
  or absent).  The ratio model/real of each of :data:`FIDELITY` figures' medians is judged
  against the issue's goal (peak and excess ±25%, GC cycles ±30%); the goal is on medians over
  at least :data:`FIDELITY_MIN_N` repeats on each side.
* **Fidelity of the lab's allocator policies** (issue 20).  Each lab policy named after an
  allocator is paired with that allocator's real row (:data:`NAMESAKES`: ``jemalloc-decay``
  ↔ ``c-jemalloc``, ``gperftools-rate`` ↔ ``c-tcmalloc``, ``mimalloc-delay`` ↔
  ``c-mimalloc``, ``none`` ↔ ``c-glibc``) of the same scenario when the knobs that are the
  same option on both sides (:data:`KNOB_TWINS`: ``dirty_decay_ms``, ``release_rate``,
  ``purge_delay_ms`` ↔ ``purge_delay``) agree — both at their defaults, or both given the same
  value (a value given equal to its side's default counts as its default) — and every other
  setting of either side is at its default (but the clocks, the lab's ``on`` and the real
  ``background_thread``, reported beside each other: the clock is what the pair compares;
  a lab run at another GOGC or memory limit has no twin).  Like with like: a malloc heap
  has no GC lag, so the lab side is the scavenger's share of its excess,
  ``excess_free_byte_seconds`` (free pages still backed), against the allocator's whole
  excess, ∫(RSS − live)dt (the real row's ``excess_free_byte_seconds``:
  :mod:`sweeperd.loadtest.cref`); beside it the end and peak
  backing, ``free_hold_seconds`` (the share over the bytes given up from the peak: the release
  pace with the two heaps' peaks divided out, as a GC'd heap peaks near its heap goal) and
  the seconds to the retain goal.  Goal (:data:`ALLOCATOR_FIDELITY`): the share and
  the end backing within ±30%, on medians.  Entries carry ``"kind": "allocator"`` (the Go
  pairs ``"kind": "go"``).
* **Recommendation.**  Among the groups a Go service can use (``go-runtime`` and ``go``, with
  no knob that Go lacks), per scenario, policy and Go version, the *default* is GOGC 100, no
  limit, the version's defaults.  A candidate is recommended when its excess byte-seconds are
  lower than the default's, significantly (above), and each CPU cost figure both measured
  (:data:`CPU_FIGURES`: scavenger CPU seconds, GC cycles as the GC's mark work) has a median no
  more than the default's × (1 + ``cpu_bound``), 10% by default.  Entries are ranked by median
  excess, each with the environment or code that applies it.

Invariants: every function is pure and order-invariant in its input rows (groups and entries
are sorted by id); a null figure is left out of that figure's statistics, never read as 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from sweeperd.loadtest import cref, runspec


def _stats() -> Any:
    """scipy.stats, imported when a test statistic is first needed (2.5 s: not on every
    ``sweeperd loadtest`` start, nor a usage error's)."""
    from scipy import stats

    return stats

FIGURES = ("peak_backed_bytes", "mean_backed_bytes", "end_backed_bytes", "excess_byte_seconds",
           "excess_garbage_byte_seconds", "excess_free_byte_seconds",
           "excess_fragmentation_byte_seconds", "free_hold_seconds", "seconds_to_retain_goal",
           "gc_cycles",
           "scavenger_cpu_seconds", "cpu_seconds_per_gib_released",
           "alloc_latency_p99_seconds", "alloc_bytes_per_s", "alloc_vs_schedule")
# figure -> allowed |ratio - 1| of model/real (None: reported, no goal)
FIDELITY: dict[str, float | None] = {
    "peak_backed_bytes": 0.25, "mean_backed_bytes": None, "excess_byte_seconds": 0.25,
    "seconds_to_retain_goal": None, "gc_cycles": 0.30,
    # no goal: why GC cycles miss — the model's mutators below the schedule's pace
    "alloc_bytes_per_s": None}
# lab policy -> the real allocator's row it is named after
NAMESAKES = {"jemalloc-decay": "c-jemalloc", "gperftools-rate": "c-tcmalloc",
             "mimalloc-delay": "c-mimalloc", "none": "c-glibc"}
# lab knob -> the allocator option that is the same knob, per pair
KNOB_TWINS: dict[str, dict[str, str]] = {
    "jemalloc-decay": {"dirty_decay_ms": "dirty_decay_ms"},
    "gperftools-rate": {"release_rate": "release_rate"},
    "mimalloc-delay": {"purge_delay_ms": "purge_delay"}}
# options that may differ from their default in a pair: the clocks (reported, not matched)
FREE_REAL_KNOBS = ("background_thread",)
FREE_LAB_KNOBS = ("on",)
ALLOCATOR_FIDELITY: dict[str, float | None] = {
    "excess_free_byte_seconds": 0.30, "end_backed_bytes": 0.30, "peak_backed_bytes": None,
    # no goal: the release pace with the heaps' peaks divided out (a GC'd heap's peak is
    # ~(1 + GOGC/100) x live, a malloc heap's ~live: the share above counts that difference)
    "free_hold_seconds": None, "seconds_to_retain_goal": None}
FIDELITY_MIN_N = 5  # the issue: "the fidelity goal is on medians over >= 5 repeats"
MATCH_KEYS = ("gogc", "memory_limit_mib", "version")
# go-runtime's knobs beyond MATCH_KEYS and the value that means "Go's default"
GO_RUNTIME_DEFAULTS: dict[str, Any] = {"free_os_memory_every_s": 0, "madvdontneed": None}
GO_POLICIES = ("go", "go-runtime")
CPU_FIGURES = ("scavenger_cpu_seconds", "gc_cycles")
CPU_BOUND = 0.10
ALPHA = 0.05
CONFIDENCE = 0.95


def median_ci(xs: Sequence[float], confidence: float = CONFIDENCE
              ) -> tuple[float | None, float | None, float | None]:
    """(median, low, high) of ``xs``, the interval by order statistics (see the module doc).

    Empty ``xs``: all None.  Too few values for ``confidence``: the median, and None, None.
    """
    v = sorted(xs)
    n = len(v)
    if n == 0:
        return None, None, None
    med = float(statistics.median(v))
    k = 0  # 1-based order statistic of the low end; 0 = no interval reaches `confidence`
    for j in range(1, n // 2 + 1):
        if 1 - 2 * _stats().binom.cdf(j - 1, n, 0.5) >= confidence - 1e-12:
            k = j
        else:
            break
    if k == 0:
        return med, None, None
    return med, float(v[k - 1]), float(v[n - k])


def min_p_value(n: int, m: int) -> float:
    """The smallest two-sided p-value the exact Mann-Whitney U test can give for sizes n, m."""
    if n == 0 or m == 0:
        return 1.0
    return min(1.0, 2 / math.comb(n + m, n))


def u_test(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value of ``a`` vs ``b``; None when either is empty."""
    if not a or not b:
        return None
    if len(set(a) | set(b)) == 1:  # all equal: no evidence of any difference
        return 1.0
    return float(_stats().mannwhitneyu(list(a), list(b), alternative="two-sided").pvalue)


def significant(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> bool:
    """Whether ``a`` and ``b`` differ at level ``alpha`` (two-sided Mann-Whitney U); False
    when the sizes cannot reach ``alpha`` at all (benchstat's rule; module doc)."""
    if min_p_value(len(a), len(b)) >= alpha:
        return False
    p = u_test(a, b)
    return p is not None and p < alpha


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def group_id(row: dict[str, Any]) -> str:
    """The row's ``group_id``, or ``<scenario>.<policy>`` for a row from before the contract."""
    gid = row.get("group_id")
    return str(gid) if gid else f"{row.get('scenario')}.{row.get('policy')}"


def values(rows: Iterable[dict[str, Any]], figure: str) -> list[float]:
    """The figure's non-null values over the ok rows."""
    out = []
    for r in rows:
        if r.get("ok"):
            x = _num(r.get(figure))
            if x is not None:
                out.append(x)
    return out


def groups(runs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``summary.json``'s ``"groups"``: per group_id its scenario, policy, settings,
    overrides, n (ok runs), run_ids (all), and per figure ``{"median", "ci95_low",
    "ci95_high", "n"}`` (n: the ok runs that measured it)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(group_id(r), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for gid in sorted(by):
        rows = sorted(by[gid], key=lambda r: (str(r.get("run_id", "")), r.get("repeat") or 0))
        first = rows[0]
        g: dict[str, Any] = {
            "scenario": first.get("scenario"), "policy": first.get("policy"),
            "settings": dict(first.get("settings") or {}),
            "overrides": dict(first.get("overrides") or {}),
            "n": sum(1 for r in rows if r.get("ok")),
            "run_ids": [str(r.get("run_id") or gid) for r in rows],
            "figures": {}}
        for f in FIGURES:
            xs = values(rows, f)
            med, lo, hi = median_ci(xs)
            g["figures"][f] = {"median": med, "ci95_low": lo, "ci95_high": hi, "n": len(xs)}
        out[gid] = g
    return out


def _match_key(g: dict[str, Any]) -> tuple[Any, ...] | None:
    """The fidelity pairing key of a go / go-runtime group, None when it has no twin."""
    s, ov = g["settings"], g["overrides"]
    if g["policy"] == "go":
        if set(ov) - set(MATCH_KEYS):
            return None  # a model knob Go has not
    elif g["policy"] == "go-runtime":
        for k, default in GO_RUNTIME_DEFAULTS.items():
            if s.get(k) not in (None, default):
                return None
        # the real release's model version (1.22.10 -> "1.21"): a model follows a range
        if (s := {**s, "version": runspec.model_version(s.get("version"))})["version"] is None:
            return None
    else:
        return None
    return (g["scenario"], *(s.get(k) for k in MATCH_KEYS))


def ratio(model: float | None, real: float | None) -> float | None:
    """model / real; None when either is missing or real is 0 (then no ratio is defined,
    unless both are 0: 1.0)."""
    if model is None or real is None:
        return None
    if real == 0:
        return 1.0 if model == 0 else None
    return model / real


def fidelity(gs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``summary.json``'s ``"fidelity"``: one entry per (go group, matching go-runtime group)."""
    real: dict[tuple[Any, ...], list[str]] = {}
    for gid, g in gs.items():
        if g["policy"] == "go-runtime" and (k := _match_key(g)) is not None:
            real.setdefault(k, []).append(gid)
    out = []
    for gid, g in gs.items():
        if g["policy"] != "go" or (k := _match_key(g)) is None:
            continue
        for rid in real.get(k, []):
            r = gs[rid]
            out.append({
                "kind": "go", "scenario": g["scenario"],
                "settings": {key: g["settings"].get(key) for key in MATCH_KEYS},
                "real_version": r["settings"].get("version"),
                **judge(gid, g, rid, r, FIDELITY)})
    return sorted(out, key=lambda e: (e["model_group"], e["real_group"]))


def judge(gid: str, g: dict[str, Any], rid: str, r: dict[str, Any],
          goals: dict[str, float | None]) -> dict[str, Any]:
    """The part of a fidelity entry every pair has: the groups, their sizes, per figure of
    ``goals`` the medians, their ratio model/real and whether it is within the figure's
    goal (None: no goal, or no ratio), and the verdicts."""
    figs: dict[str, Any] = {}
    for f, tol in goals.items():
        m, re_ = g["figures"][f]["median"], r["figures"][f]["median"]
        q = ratio(m, re_)
        figs[f] = {"model": m, "real": re_, "ratio": q, "goal": tol,
                   "within": None if tol is None or q is None else abs(q - 1) <= tol + 1e-12}
    judged = [v["within"] for v in figs.values() if v["goal"] is not None]
    repeats = min(g["n"], r["n"])
    return {"model_group": gid, "real_group": rid, "n_model": g["n"], "n_real": r["n"],
            "figures": figs, "enough_repeats": repeats >= FIDELITY_MIN_N,
            "within_goal": (all(j is True for j in judged)
                            if all(j is not None for j in judged) else None),
            "goal_met": bool(judged) and all(j is True for j in judged)
            and repeats >= FIDELITY_MIN_N}


def _twins_agree(lab: dict[str, Any], real: dict[str, Any]) -> bool:
    """Do a lab group and a real allocator group have the same settings where the two have
    the same knob, and nothing else away from its default but the clock (module doc)?  A
    value given equal to its side's default counts as not given."""
    twins = KNOB_TWINS.get(lab["policy"], {})
    lab_defaults = runspec.policy_defaults(lab["policy"])
    lab_given = {k: v for k, v in lab["overrides"].items()
                 if k not in lab_defaults or v != lab_defaults[k]}
    knobs = cref.allocator_of(real["policy"]).knobs
    real_given = {k: v for k, v in real["overrides"].items()
                  if v is not None and (k not in knobs or v != knobs[k].default)}
    if set(lab_given) - set(twins) - set(FREE_LAB_KNOBS):
        return False  # a GC knob or another setting the real allocator has no twin for
    if set(real_given) - set(twins.values()) - set(FREE_REAL_KNOBS):
        return False  # an allocator option the lab has no twin for
    # both unset (their defaults), or given equal
    return all(lab_given.get(lk) == real_given.get(rk) for lk, rk in twins.items())


def allocator_fidelity(gs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The allocator pairs of ``"fidelity"`` (module doc), ``"kind": "allocator"``."""
    out = []
    for gid, g in gs.items():
        real_policy = NAMESAKES.get(g["policy"])
        if real_policy is None:
            continue
        for rid, r in gs.items():
            if (r["policy"] != real_policy or r["scenario"] != g["scenario"]
                    or not _twins_agree(g, r)):
                continue
            out.append({
                "kind": "allocator", "scenario": g["scenario"],
                "settings": dict(g["overrides"]), "real_settings": dict(r["overrides"]),
                "lab_policy": g["policy"], "real_policy": r["policy"],
                "clock": {"lab": g["settings"].get("on", "timer"),
                          "real_background_thread": r["settings"].get("background_thread")},
                **judge(gid, g, rid, r, ALLOCATOR_FIDELITY)})
    return sorted(out, key=lambda e: (e["model_group"], e["real_group"]))


def apply_text(policy: str, settings: dict[str, Any]) -> str:
    """The environment / code that applies ``settings`` to a Go service (``GOGC=50
    GOMEMLIMIT=768MiB``...); the Go version when one is named."""
    parts = []
    gogc = settings.get("gogc", 100)
    if gogc != 100:
        parts.append(f"GOGC={'off' if gogc in ('off', -1) else gogc}")
    lim = settings.get("memory_limit_mib") or 0
    if lim:
        parts.append(f"GOMEMLIMIT={lim}MiB")
    if settings.get("madvdontneed") is not None:
        parts.append(f"GODEBUG=madvdontneed={int(settings['madvdontneed'])}")
    every = settings.get("free_os_memory_every_s") or 0
    if every:
        parts.append(f"a goroutine calling debug.FreeOSMemory() every {every:g} s")
    text = " ".join(parts) or "(Go's defaults)"
    if settings.get("version"):
        text += f" on Go {settings['version']}"
    return text + (" (modelled by the go policy)" if policy == "go" else "")


def _usable(g: dict[str, Any]) -> bool:
    if g["policy"] == "go":
        return not (set(g["overrides"]) - set(MATCH_KEYS))
    if g["policy"] == "go-runtime":
        return not (set(g["overrides"]) - set(MATCH_KEYS) - set(GO_RUNTIME_DEFAULTS))
    return False


def _is_default(g: dict[str, Any]) -> bool:
    s = g["settings"]
    return (s.get("gogc", 100) == 100 and not s.get("memory_limit_mib")
            and not s.get("free_os_memory_every_s") and s.get("madvdontneed") is None)


def recommendation(gs: dict[str, dict[str, Any]], runs: Iterable[dict[str, Any]],
                   cpu_bound: float = CPU_BOUND, alpha: float = ALPHA) -> dict[str, Any]:
    """``summary.json``'s ``"recommendation"`` (module doc): ``entries`` ranked by median
    excess byte-seconds, ``considered`` (every candidate and why it was or was not taken), and
    a ``note`` that says plainly when nothing is significant."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(group_id(r), []).append(r)
    families: dict[tuple[Any, ...], list[str]] = {}
    for gid, g in gs.items():
        if g["policy"] in GO_POLICIES and _usable(g):
            fam = (g["scenario"], g["policy"], g["settings"].get("version"))
            families.setdefault(fam, []).append(gid)
    entries, considered = [], []
    for fam in sorted(families, key=str):
        ids = sorted(families[fam])
        defaults = [i for i in ids if _is_default(gs[i])]
        for gid in ids:
            if gid in defaults:
                continue
            g = gs[gid]
            c: dict[str, Any] = {"group_id": gid, "scenario": fam[0], "policy": fam[1],
                                 "settings": g["settings"],
                                 "apply": apply_text(fam[1], g["settings"])}
            if not defaults:
                considered.append({**c, "taken": False,
                                   "why": "no default run (GOGC 100, no limit) to compare with"})
                continue
            d = gs[defaults[0]]
            c["default_group"] = defaults[0]
            a = values(by[gid], "excess_byte_seconds")
            b = values(by[defaults[0]], "excess_byte_seconds")
            med, dmed = g["figures"]["excess_byte_seconds"]["median"], \
                d["figures"]["excess_byte_seconds"]["median"]
            c.update(excess_byte_seconds=med, default_excess_byte_seconds=dmed,
                     excess_ratio=ratio(med, dmed), p_value=u_test(a, b))
            cpu = {}
            for f in CPU_FIGURES:
                q = ratio(g["figures"][f]["median"], d["figures"][f]["median"])
                if q is not None:
                    cpu[f] = q
            c["cpu_ratios"] = cpu
            if med is None or dmed is None:
                why = "excess not measured"
            elif not significant(a, b, alpha):
                why = (f"not significant: {len(a)} vs {len(b)} runs cannot reach p < {alpha}"
                       if min_p_value(len(a), len(b)) >= alpha
                       else f"not significant (p = {c['p_value']:.3g})")
            elif med >= dmed:
                why = "significantly more excess than the default"
            elif any(q > 1 + cpu_bound + 1e-12 for q in cpu.values()):
                worst = max(cpu, key=lambda f: cpu[f])
                why = (f"{worst} {cpu[worst]:.2f}x the default's, over the "
                       f"+{cpu_bound:.0%} bound")
            else:
                why = ""
            considered.append({**c, "taken": not why, "why": why or "recommended"})
            if not why:
                entries.append(c)
    entries.sort(key=lambda e: (e["scenario"], e["excess_byte_seconds"], e["group_id"]))
    if entries:
        note = (f"{len(entries)} setting(s) hold significantly less excess memory than the "
                f"default (Mann-Whitney U, p < {alpha}) at no more than +{cpu_bound:.0%} CPU.")
    elif any(c.get("p_value") is not None for c in considered):
        note = ("Nothing is significant: no setting held significantly less excess memory "
                f"than the default (Mann-Whitney U, p < {alpha}) within +{cpu_bound:.0%} CPU "
                "over these repeats.")
    else:
        note = ("Nothing to recommend: no Go setting was run beside a default (GOGC 100, no "
                "limit) with repeats to compare.")
    return {"by": "excess_byte_seconds", "cpu_figures": list(CPU_FIGURES),
            "cpu_bound": cpu_bound, "alpha": alpha, "entries": entries,
            "considered": considered, "note": note}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (both coordinates minimised: at most
    as large on both and smaller on one), sorted by x then y."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((a <= x and b <= y) and (a < x or b < y) for a, b in points):
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1], i))


def analyse(runs: list[dict[str, Any]], cpu_bound: float = CPU_BOUND) -> dict[str, Any]:
    """The three top-level additions to ``summary.json``: ``groups``, ``fidelity``,
    ``recommendation``."""
    gs = groups(runs)
    return {"groups": gs, "fidelity": fidelity(gs) + allocator_fidelity(gs),
            "recommendation": recommendation(gs, runs, cpu_bound)}
