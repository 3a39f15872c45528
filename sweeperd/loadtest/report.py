"""The load test's report: PNG plots (matplotlib), CSVs, ``summary.json`` and ``report.html``.

``report.html`` is self-contained: every plot is embedded as a ``data:`` URI, so the file can
be mailed or attached to a ticket.  Plots, per scenario, one line per policy:

* ``<scenario>-memory.png``: the kernel's backing, with the live heap, heap goal and retain
  goal of each run (thin lines in the policy's colour);
* ``<scenario>-scavenger-cpu.png``: cumulative scavenger CPU (``/proc``);
* ``<scenario>-madvise.png``: cumulative madvise calls;
* ``<scenario>-sweep-rate.png``: pages swept per second, background sweepers vs mutators;
* ``<scenario>-alloc-latency.png``: refill latency p50/p90/p99 per policy.

and per run (:func:`plot_holds`), ``<run_id>-holds.png``: what holds the memory over
time, stacked — the live heap, uncollected garbage, fragmentation (free slots of in-use spans)
and free pages still backed — under the kernel's backing drawn as a line on top;
and, per scenario with real allocator rows (:func:`plot_pairs`), ``<scenario>-allocators.png``:
each lab policy beside the real allocator it is named after, one panel a pair;
and, for the whole run, ``pareto.png`` (section "What to change"): each group's median excess
byte-seconds against its CPU seconds per GiB released and its p99 allocation latency, with 95%
CI bars and the Pareto frontier (:mod:`sweeperd.loadtest.compare`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to files
import matplotlib.pyplot as plt

from sweeperd.loadtest import compare
from sweeperd.loadtest.outdir import atomic_write
from sweeperd.loadtest.runspec import GO_RUNTIME, row_label
from sweeperd.loadtest.sampler import columns
from sweeperd.loadtest.summary import quantile
from sweeperd.workload.mutator import ALLOC_BUCKETS

MIB = 1 << 20
GIB = 1 << 30


def csv_text(rows: list[dict[str, float]]) -> str:
    """The run's samples as CSV, one row each."""
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=columns())
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, 0.0) for k in columns()})
    return f.getvalue()


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """:func:`csv_text` into ``path``, atomically (``CannotWrite`` naming it)."""
    atomic_write(path, csv_text(rows))


def _xs(rows: list[dict[str, float]]) -> list[float]:
    return [r["scenario_elapsed_s"] for r in rows]


def _rate(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for a, b in itertools.pairwise(rows):
        dt = b["scenario_elapsed_s"] - a["scenario_elapsed_s"]
        if dt > 0:
            xs.append(b["scenario_elapsed_s"])
            ys.append((b[key] - a[key]) / dt)
    return xs, ys


def plot_scenario(outdir: Path, scenario: str, runs: list[tuple[str, list[dict[str, float]]]],
                  phases: Iterable[tuple[float, str]]) -> list[Path]:
    """The scenario's five plots; returns their paths.  ``runs``: (label, rows), the label
    starting with the policy's name (``go-runtime gogc=50``)."""
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths: list[Path] = []
    marks = list(phases)

    def new(title: str, ylabel: str) -> tuple[Any, Any]:
        fig, ax = plt.subplots(figsize=(12, 4.6), dpi=100)
        ax.set_title(f"{scenario}: {title}")
        ax.set_xlabel("seconds since the scenario started")
        ax.set_ylabel(ylabel)
        for t, name in marks:
            ax.axvline(t, color="#bbbbbb", lw=0.8, zorder=0)
            ax.text(t, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top", color="#777777")
        ax.grid(alpha=0.3)
        return fig, ax

    def save(fig: Any, ax: Any, name: str) -> None:
        if ax.get_legend_handles_labels()[0]:  # (a plot of no run's series has no legend)
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the lines
        fig.tight_layout()
        p = outdir / f"{scenario}-{name}.png"
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png")
        finally:
            plt.close(fig)
        paths.append(atomic_write(p, buf.getvalue()))

    fig, ax = new("heap backing (kernel) vs live heap, heap goal, retain goal", "MiB")
    for i, (policy, rows) in enumerate(runs):
        c, xs = colors[i % len(colors)], _xs(rows)
        ax.plot(xs, [r["kernel_backed_bytes"] / MIB for r in rows], color=c, lw=2,
                label=f"{policy}: backed")
        ax.plot(xs, [r["retain_goal_bytes"] / MIB for r in rows], color=c, lw=0.8, ls=":")
        if any(r["goal_bytes"] for r in rows):  # a malloc heap (c-*) has no heap goal
            ax.plot(xs, [r["goal_bytes"] / MIB for r in rows], color=c, lw=0.8, ls="--")
    if runs:
        first, rows = runs[0]
        ax.plot(_xs(rows), [r["live_bytes"] / MIB for r in rows], color="black", lw=1.2,
                label=f"live heap (marked; {first} run)")
        ax.plot([], [], color="gray", ls="--", lw=0.8, label="heap goal (per run)")
        ax.plot([], [], color="gray", ls=":", lw=0.8, label="retain goal (per run)")
    save(fig, ax, "memory")

    for key, name, title, ylabel in (
            ("cpu_scavenger_s", "scavenger-cpu", "scavenger CPU (/proc)", "CPU seconds"),
            ("madvise_calls", "madvise", "madvise calls", "calls")):
        fig, ax = new(title, ylabel)
        for i, (policy, rows) in enumerate(runs):
            if policy.split(" ")[0] == GO_RUNTIME:  # Go 1.19 does not expose these
                continue
            base = rows[0][key] if rows else 0.0
            ax.plot(_xs(rows), [r[key] - base for r in rows], color=colors[i % len(colors)],
                    label=policy)
        save(fig, ax, name)

    ours = [(i, p, rows) for i, (p, rows) in enumerate(runs) if p.split(" ")[0] != GO_RUNTIME]
    fig, ax = new("sweep rate: background sweepers (solid) vs mutators (dashed)", "pages/s")
    for i, policy, rows in ours:  # Go 1.19 does not expose these
        c = colors[i % len(colors)]
        ax.plot(*_rate(rows, "sweep_pages_background"), color=c, label=f"{policy}: background")
        ax.plot(*_rate(rows, "sweep_pages_mutator"), color=c, ls="--",
                label=f"{policy}: mutators")
    save(fig, ax, "sweep-rate")

    fig, ax = new("mutator refill latency (sweeperd_mutator_alloc_seconds)", "ms")
    qs = (0.5, 0.9, 0.99)
    width = 0.8 / max(1, len(ours))
    for j, (i, policy, rows) in enumerate(ours):
        vals = [1000 * (alloc_quantile(rows, q) or 0.0) for q in qs]
        ax.bar([k + j * width for k in range(len(qs))], vals, width=width,
               color=colors[i % len(colors)], label=policy)
    ax.set_xticks([k + width * (len(ours) - 1) / 2 for k in range(len(qs))],
                  [f"p{round(q * 100)}" for q in qs])
    ax.set_xlabel("quantile over the run")
    save(fig, ax, "alloc-latency")
    return paths


HOLDS = (("live_bytes", "live heap (marked)", "#4c72b0"),
         ("garbage_bytes", "garbage not yet collected (GC's lag)", "#dd8452"),
         ("fragmentation_bytes", "fragmentation (free slots of in-use spans)", "#8172b3"),
         ("free_backed_bytes", "free pages still backed (scavenger's lag)", "#c44e52"))
# a malloc heap's row (c-*): no GC, and the allocator's books are not read
MALLOC_HOLDS = (("live_bytes", "live (what the program holds)", "#4c72b0"),
                ("garbage_bytes", "(no GC: nothing uncollected)", "#dd8452"),
                ("fragmentation_bytes", "(not told apart from free)", "#8172b3"),
                ("free_backed_bytes", "RssAnon beyond live: the allocator's free pages and "
                 "fragmentation (its purge's lag)", "#c44e52"))


def plot_holds(outdir: Path, name: str, rows: list[dict[str, float]],
               phases: Iterable[tuple[float, str]], title: str | None = None,
               malloc: bool = False) -> Path:
    """``<name>-holds.png`` (``name``: a file-name-safe run id; ``title``: shown, default
    ``name``): the run's backing stacked by what holds it (HOLDS, bottom up),
    with the kernel's backed bytes as a black line on top, and the live heap the scenario asks
    for now dashed (after a drop, the marked live heap above it is dead but counted live
    until the next mark: not in the excess at all).  A layer below 0 (only the free
    pages, when the kernel held less than the live heap) is drawn as 0: the line is the
    truth.  Returns the path (written atomically)."""
    xs = _xs(rows)
    fig, ax = plt.subplots(figsize=(12, 4.6), dpi=100)
    try:
        ax.set_title(f"{title or name}: what holds the memory")
        ax.set_xlabel("seconds since the scenario started")
        ax.set_ylabel("MiB")
        for t, phase in phases:
            ax.axvline(t, color="#bbbbbb", lw=0.8, zorder=0)
            ax.text(t, 1.0, f" {phase}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top", color="#777777")
        holds = MALLOC_HOLDS if malloc else HOLDS
        ax.stackplot(xs, *[[max(0.0, r.get(k, 0.0)) / MIB for r in rows] for k, _, _ in holds],
                     labels=[label for _, label, _ in holds],
                     colors=[c for _, _, c in holds], alpha=0.85)
        ax.plot(xs, [r["kernel_backed_bytes"] / MIB for r in rows], color="black", lw=1.4,
                label="RssAnon (kernel)" if malloc else "backed (kernel)")
        ax.plot(xs, [r["target_live_bytes"] / MIB for r in rows], color="black", lw=0.8,
                ls="--", label="live asked now (above it: dead, unmarked)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return atomic_write(outdir / f"{name}-holds.png", buf.getvalue())


def plot_pairs(outdir: Path, scenario: str,
               pairs: list[tuple[str, list[dict[str, float]], str, list[dict[str, float]]]],
               phases: Iterable[tuple[float, str]]) -> Path:
    """``<scenario>-allocators.png``: one panel per (lab label, lab rows, real label, real
    rows): the lab run's backing (the kernel's, of the heap arena) and the part of it that is
    not uncollected garbage (what a malloc heap would hold: live + free + fragmentation),
    beside the real allocator's ``RssAnon``, with the live heap the scenario asks for dashed.
    Returns the path (written atomically)."""
    n = max(1, len(pairs))
    cols = 2 if n > 1 else 1
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(12, 3.6 * nrows), dpi=100, squeeze=False)
    phases = list(phases)
    try:
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        for ax, (lab, lab_rows, real, real_rows) in zip(axes.flat, pairs, strict=False):
            ax.set_title(f"{lab}  vs  {real}", fontsize=10)
            for t, _ in phases:
                ax.axvline(t, color="#bbbbbb", lw=0.8, zorder=0)
            ax.plot(_xs(lab_rows), [r["kernel_backed_bytes"] / MIB for r in lab_rows],
                    color="#4c72b0", lw=1.0, alpha=0.5, label=f"{lab}: backed")
            ax.plot(_xs(lab_rows), [(r["kernel_backed_bytes"] - r.get("garbage_bytes", 0.0))
                                    / MIB for r in lab_rows],
                    color="#4c72b0", lw=1.6, label=f"{lab}: backed less GC garbage")
            ax.plot(_xs(real_rows), [r["kernel_backed_bytes"] / MIB for r in real_rows],
                    color="#c44e52", lw=1.6, label=f"{real}: RssAnon")
            src = real_rows or lab_rows
            ax.plot(_xs(src), [r["target_live_bytes"] / MIB for r in src], color="black",
                    lw=0.8, ls="--", label="live asked")
            ax.set_xlabel("seconds since the scenario started")
            ax.set_ylabel("MiB")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
        fig.suptitle(f"{scenario}: each lab policy beside the allocator it is named after")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return atomic_write(outdir / f"{scenario}-allocators.png", buf.getvalue())


def alloc_quantile(rows: list[dict[str, float]], q: float) -> float | None:
    if not rows:
        return None
    a, b = rows[0], rows[-1]
    counts = [b[f"alloc_le_{i}"] - a[f"alloc_le_{i}"] for i in range(len(ALLOC_BUCKETS))]
    return quantile(q, [*counts, b["alloc_count"] - a["alloc_count"]])


def _img(p: Path) -> str:
    data = base64.b64encode(p.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(p.name)}</figcaption></figure>")


def _fmt(k: str, v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if k.endswith("_bytes") and isinstance(v, int | float):
        return f"{v / MIB:,.1f} MiB"
    if k.endswith("byte_seconds"):
        return f"{v / MIB:,.0f} MiB·s"
    if (k.endswith("_seconds") or k == "seconds_to_retain_goal") and isinstance(v, float):
        return f"{v * 1000:.3f} ms" if "latency" in k else f"{v:.2f} s"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


TABLE = ("policy", "ok", "peak_backed_bytes", "mean_backed_bytes", "end_backed_bytes",
         "excess_byte_seconds", "excess_garbage_byte_seconds", "excess_free_byte_seconds",
         "excess_fragmentation_byte_seconds", "free_hold_seconds",
         "seconds_to_retain_goal", "scavenger_cpu_seconds", "released_bytes",
         "cpu_seconds_per_gib_released", "madvise_calls", "alloc_latency_p50_seconds",
         "alloc_latency_p99_seconds", "gc_cycles", "worker_deaths", "max_books_vs_kernel_error")


def write_html(path: Path, summary: dict[str, Any], plots: dict[str, list[Path]],
               scenarios: dict[str, str]) -> None:
    """``report.html``: the machine, the versions, per scenario its text, a summary table and
    its plots, then each failed run's log tail."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>sweeperd load test"
             "</title><style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
             "padding:3px 6px;text-align:right}th{background:#eee;max-width:7em;"
             "vertical-align:bottom}img{max-width:100%}"
             "pre{background:#f6f6f6;padding:6px;overflow-x:auto;font-size:11px}"
             ".bad{color:#b00}.good{color:#070}</style></head><body>",
             "<h1>sweeperd load test</h1>",
             *([f"<p class=\"bad\"><b>Interrupted:</b> {len(summary['runs'])} of "
                f"{summary['runs_planned']} planned runs done.</p>"]
               if len(summary["runs"]) < summary.get("runs_planned", 0) else []),
             f"<p>Started {html.escape(str(summary.get('started', '')))}. "
             "Backing is the kernel's (st_blocks of the heap's memfd, read by the harness; "
             "for the real Go row the resident bytes of Go's heap mappings, for the real "
             "allocators' rows, c-*, the program's RssAnon); "
             "see the README's \"Load testing\" for each column.</p>",
             "<h2>Machine and versions</h2><pre>"
             + html.escape(json.dumps({"machine": summary["machine"],
                                       "versions": summary["versions"]}, indent=2)) + "</pre>"]
    for name, text in scenarios.items():
        runs = [r for r in summary["runs"] if r["scenario"] == name]
        parts.append(f"<h2>Scenario {html.escape(name)}</h2>")
        parts.append("<table><tr>" + "".join(  # the contract's names, wrapped at each _
            "<th>" + html.escape(k).replace("_", "_<wbr>") + "</th>" for k in TABLE)
                     + (("<th>trace fit (median / p90 error)</th>")
                        if any("trace_fit" in r for r in runs) else "") + "</tr>")
        for r in runs:
            cells = "".join(f"<td>{html.escape(row_label(r))}</td>" if k == "policy"
                            else f"<td>{_fmt(k, r.get(k))}</td>" for k in TABLE)
            if "trace_fit" in r:
                f = r["trace_fit"]
                cells += (f"<td>{_fmt('', f['live_bytes_rel_error_median'])} / "
                          f"{_fmt('', f['live_bytes_rel_error_p90'])} "
                          f"({f['cycles']} cycles)</td>")
            cls = "" if r["ok"] else " class='bad'"
            parts.append(f"<tr{cls}>{cells}</tr>")
        parts.append("</table>")
        parts.extend(_img(p) for p in plots.get(name, []))
        parts.append("<details><summary>the scenario</summary><pre>" + html.escape(text)
                     + "</pre></details>")
        for r in runs:
            if not r["ok"]:
                parts.append(f"<h3 class='bad'>{html.escape(name)} x "
                             f"{html.escape(r['policy'])} failed</h3><pre>"
                             + html.escape(r.get("error", "") + "\n" + r.get("log_tail", ""))
                             + "</pre>")
    parts.extend(comparison_html(path.parent, summary))
    parts.append("</body></html>")
    atomic_write(path, "\n".join(parts))


PARETO_X = (("cpu_seconds_per_gib_released", "CPU seconds per GiB released", 1.0),
            ("alloc_latency_p99_seconds", "p99 allocation latency (ms)", 1000.0))


def _ci_err(fig: dict[str, Any], scale: float) -> tuple[float, float]:
    m, lo, hi = fig["median"], fig["ci95_low"], fig["ci95_high"]
    if lo is None or hi is None:
        return 0.0, 0.0
    return (m - lo) * scale, (hi - m) * scale


def plot_pareto(groups: dict[str, dict[str, Any]]) -> bytes:
    """``pareto.png``: two panels, each group's median excess (GiB·s) against a cost (CPU
    seconds per GiB released; p99 allocation latency), 95% CI bars where n allows, the
    frontier (no group both lower) drawn; a panel no group measured says so."""
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    policies = sorted({str(g["policy"]) for g in groups.values()})
    shown: set[str] = set()  # the policies with a point in some panel, for the legend
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=100)
    try:
        for ax, (key, label, scale) in zip(axes, PARETO_X, strict=True):
            pts: list[tuple[float, float]] = []
            for gid, g in groups.items():
                fx, fy = g["figures"][key], g["figures"]["excess_byte_seconds"]
                if fx["median"] is None or fy["median"] is None:
                    continue
                x, y = fx["median"] * scale, fy["median"] / GIB
                c = colors[policies.index(str(g["policy"])) % len(colors)]
                ax.errorbar([x], [y], xerr=[[v] for v in _ci_err(fx, scale)],
                            yerr=[[v] for v in _ci_err(fy, 1 / GIB)], fmt="o", color=c,
                            capsize=3, ms=5)
                ax.annotate(gid, (x, y), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
                pts.append((x, y))
                shown.add(str(g["policy"]))
            front = compare.pareto_front(pts)
            if front:
                fx_, fy_ = [pts[i][0] for i in front], [pts[i][1] for i in front]
                ax.step(fx_, fy_, where="post", color="black", lw=1, ls="--", marker="s",
                        mfc="none", ms=11, label="Pareto frontier")
            else:
                ax.text(0.5, 0.5, "no group measured both figures", ha="center",
                        transform=ax.transAxes, color="#777777")
            ax.set_xlabel(label)
            ax.set_ylabel("excess GiB·s (median, 95% CI)")
            ax.set_title(f"excess memory vs {label}", fontsize=10)
            ax.grid(alpha=0.3)
        for i, p in enumerate(policies):
            if p in shown:
                axes[0].plot([], [], "o", color=colors[i % len(colors)], label=p)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _ratio_cell(f: dict[str, Any]) -> str:
    q = f["ratio"]
    if q is None:
        return "<td>—</td>"
    cls = {True: " class='good'", False: " class='bad'", None: ""}[f["within"]]
    goal = f" (±{f['goal']:.0%})" if f["goal"] is not None else ""
    return f"<td{cls}>{q:.2f}x{goal}</td>"


def _verdict(e: dict[str, Any]) -> str:
    return "yes" if e["goal_met"] else ("within, too few repeats" if e["within_goal"] else "NO")


def _heads(figs: list[str]) -> str:
    return "".join(f"<th>{html.escape(f).replace('_', '_<wbr>')}</th>" for f in figs)


def allocator_fidelity_html(entries: list[dict[str, Any]]) -> list[str]:
    """The allocator pairs' table: each lab policy against its namesake's real row."""
    out = ["<h2>The lab's policies checked against the real allocators</h2>",
           "<p>Each lab policy beside the real allocator it is named after (the C reference "
           "program under <code>LD_PRELOAD</code>, at the same knob values or both at their "
           "defaults), on the same scenario. Like with like: a malloc heap has no GC lag, so "
           "the lab side is the scavenger's share of its excess (free pages still backed) "
           "against the allocator's whole excess, ∫(RssAnon - live)dt. Goal: that share and "
           "the end backing within ±30% (ratios of medians, lab/real). <i>clock</i>: the lab "
           "policy's purge clock and the allocator's background thread (jemalloc without "
           "one, and mimalloc, purge only when the program calls malloc or free).</p>"]
    if not entries:
        out.append("<p>No lab policy ran beside the allocator it is named after, at the same "
                   "knobs (<code>jemalloc-decay</code> with <code>c-jemalloc</code>, "
                   "<code>gperftools-rate</code> with <code>c-tcmalloc</code>, "
                   "<code>mimalloc-delay</code> with <code>c-mimalloc</code>, <code>none</code> "
                   "with <code>c-glibc</code>: <code>--c-reference "
                   "glibc,jemalloc,tcmalloc,mimalloc</code> adds the real rows).</p>")
        return out
    figs = list(compare.ALLOCATOR_FIDELITY)
    out.append("<table class='fidelity allocators'><tr><th>scenario</th><th>lab</th>"
               "<th>real</th><th>clock</th><th>runs lab / real</th>" + _heads(figs)
               + "<th>goal met</th></tr>")
    for e in entries:
        lab = " ".join([e["lab_policy"], *(f"{k}={v}" for k, v in e["settings"].items())])
        real = " ".join([e["real_policy"], *(f"{k}={v}" for k, v in
                                             e["real_settings"].items())])
        bt = e["clock"]["real_background_thread"]
        clock = f"{e['clock']['lab']} / " + ("background thread" if bt == "true" else
                                            "on activity" if e["real_policy"] in
                                            ("c-jemalloc", "c-mimalloc") else "—")
        out.append(f"<tr><td>{html.escape(str(e['scenario']))}</td>"
                   f"<td>{html.escape(lab)}</td><td>{html.escape(real)}</td>"
                   f"<td>{html.escape(clock)}</td><td>{e['n_model']} / {e['n_real']}</td>"
                   + "".join(_ratio_cell(e["figures"][f]) for f in figs)
                   + f"<td>{_verdict(e)}</td></tr>")
    out.append("</table>")
    return out


def fidelity_html(entries: list[dict[str, Any]]) -> list[str]:
    """The fidelity table: each go group against its go-runtime twin, ratio model/real."""
    out = ["<h2>The model checked against the real runtime</h2>",
           "<p>Each <code>go</code> group (the model) beside the <code>go-runtime</code> group "
           "(real Go) of the same scenario, GOGC, memory limit and version: the ratio of the "
           "medians, model/real. Goal: peak and excess within ±25%, GC cycles within ±30%, on "
           f"medians over ≥ {compare.FIDELITY_MIN_N} repeats. <code>alloc_bytes_per_s</code> "
           "has no goal: below 1, the model's mutators allocated less than Go on the same "
           "schedule, and its GC ran fewer cycles for it.</p>"]
    if not entries:
        out.append("<p>No <code>go</code> group had a <code>go-runtime</code> twin (run with "
                   "<code>--go-reference</code> or a <code>go-runtime</code> policy, at the "
                   "same settings and a Go release the model's <code>version</code> follows: "
                   "1.21+ for 1.21, 1.19 or 1.20 for 1.19).</p>")
        return out
    figs = list(compare.FIDELITY)
    out.append("<table class='fidelity'><tr><th>scenario</th><th>settings</th><th>runs "
               "model / real</th>" + _heads(figs) + "<th>goal met</th></tr>")
    for e in entries:
        sets = ", ".join(f"{k}={v}" for k, v in e["settings"].items() if v is not None)
        if e.get("real_version"):
            sets += f"; real Go {e['real_version']}"
        out.append(f"<tr><td>{html.escape(str(e['scenario']))}</td>"
                   f"<td>{html.escape(sets or 'defaults')}</td>"
                   f"<td>{e['n_model']} / {e['n_real']}</td>"
                   + "".join(_ratio_cell(e["figures"][f]) for f in figs)
                   + f"<td>{_verdict(e)}</td></tr>")
    out.append("</table>")
    return out


def recommendation_html(rec: dict[str, Any]) -> list[str]:
    """The recommendation table, its note, and every candidate considered."""
    out = [f"<p class='note'>{html.escape(rec['note'])}</p>",
           "<table class='recommendation'><tr><th>rank</th><th>scenario</th><th>apply</th>"
           "<th>excess (median)</th><th>default's</th><th>ratio</th><th>p (U test)</th>"
           "<th>CPU vs default</th></tr>"]
    for i, e in enumerate(rec["entries"], 1):
        cpu = ", ".join(f"{k} {v:.2f}x" for k, v in e["cpu_ratios"].items()) or "—"
        out.append(f"<tr><td>{i}</td><td>{html.escape(str(e['scenario']))}</td>"
                   f"<td><code>{html.escape(e['apply'])}</code></td>"
                   f"<td>{_fmt('excess_byte_seconds', e['excess_byte_seconds'])}</td>"
                   f"<td>{_fmt('excess_byte_seconds', e['default_excess_byte_seconds'])}</td>"
                   f"<td>{e['excess_ratio']:.2f}x</td><td>{e['p_value']:.3g}</td>"
                   f"<td>{html.escape(cpu)}</td></tr>")
    if not rec["entries"]:
        out.append("<tr><td colspan='8'>nothing significant to recommend</td></tr>")
    out.append("</table>")
    if rec["considered"]:
        out.append("<details><summary>every setting considered</summary><table><tr>"
                   "<th>group</th><th>apply</th><th>verdict</th></tr>")
        for c in rec["considered"]:
            out.append(f"<tr><td>{html.escape(c['group_id'])}</td>"
                       f"<td><code>{html.escape(c['apply'])}</code></td>"
                       f"<td>{html.escape(c['why'])}</td></tr>")
        out.append("</table></details>")
    return out


def comparison_html(outdir: Path, summary: dict[str, Any]) -> list[str]:
    """The fidelity section and "What to change" (writes ``outdir/pareto.png``); nothing
    for a summary without ``groups`` (one from before issue 18)."""
    if "groups" not in summary:
        return []
    entries = summary.get("fidelity", [])
    out = fidelity_html([e for e in entries if e.get("kind", "go") == "go"])
    out += allocator_fidelity_html([e for e in entries if e.get("kind") == "allocator"])
    out.append("<h2>What to change</h2>")
    out.append("<p>Each group (scenario, policy, settings) at its median over its repeats, "
               "with 95% CI bars where there are enough (n ≥ 6); the dashed line is the "
               "Pareto frontier: no group is lower on both axes. The real Go row does not "
               "expose CPU per GiB released or allocation latency, so it is absent "
               "from these panels.</p>")
    png = atomic_write(outdir / "pareto.png", plot_pareto(summary["groups"]))
    out.append(_img(png))
    out.extend(recommendation_html(summary["recommendation"]))
    return out
