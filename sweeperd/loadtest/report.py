"""The load test's report: PNG plots (matplotlib), CSVs, ``summary.json`` and ``report.html``.

``report.html`` is self-contained: every plot is embedded as a ``data:`` URI, so the file can
be mailed or attached to a ticket.  Plots, per scenario, one line per policy:

* ``<scenario>-memory.png``: the kernel's backing, with the live heap, heap goal and retain
  goal of each run (thin lines in the policy's colour);
* ``<scenario>-scavenger-cpu.png``: cumulative scavenger CPU (``/proc``);
* ``<scenario>-madvise.png``: cumulative madvise calls;
* ``<scenario>-sweep-rate.png``: pages swept per second, background sweepers vs mutators;
* ``<scenario>-alloc-latency.png``: refill latency p50/p90/p99 per policy.

and per run (:func:`plot_holds`), ``<scenario>-<policy>-holds.png``: what holds the memory over
time, stacked — the live heap, uncollected garbage, fragmentation (free slots of in-use spans)
and free pages still backed — under the kernel's backing drawn as a line on top.
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

from sweeperd.loadtest.outdir import atomic_write
from sweeperd.loadtest.runspec import GO_RUNTIME, row_label
from sweeperd.loadtest.sampler import columns
from sweeperd.loadtest.summary import quantile
from sweeperd.workload.mutator import ALLOC_BUCKETS

MIB = 1 << 20


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


def plot_holds(outdir: Path, name: str, rows: list[dict[str, float]],
               phases: Iterable[tuple[float, str]]) -> Path:
    """``<name>-holds.png``: the run's backing stacked by what holds it (HOLDS, bottom up),
    with the kernel's backed bytes as a black line on top, and the live heap the scenario asks
    for now dashed (after a drop, the marked live heap above it is dead but counted live
    until the next mark: not in the excess at all).  A layer below 0 (only the free
    pages, when the kernel held less than the live heap) is drawn as 0: the line is the
    truth.  Returns the path (written atomically)."""
    xs = _xs(rows)
    fig, ax = plt.subplots(figsize=(12, 4.6), dpi=100)
    try:
        ax.set_title(f"{name}: what holds the memory")
        ax.set_xlabel("seconds since the scenario started")
        ax.set_ylabel("MiB")
        for t, phase in phases:
            ax.axvline(t, color="#bbbbbb", lw=0.8, zorder=0)
            ax.text(t, 1.0, f" {phase}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top", color="#777777")
        ax.stackplot(xs, *[[max(0.0, r.get(k, 0.0)) / MIB for r in rows] for k, _, _ in HOLDS],
                     labels=[label for _, label, _ in HOLDS],
                     colors=[c for _, _, c in HOLDS], alpha=0.85)
        ax.plot(xs, [r["kernel_backed_bytes"] / MIB for r in rows], color="black", lw=1.4,
                label="backed (kernel)")
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


TABLE = ("policy", "ok", "peak_backed_bytes", "mean_backed_bytes", "excess_byte_seconds",
         "excess_garbage_byte_seconds", "excess_free_byte_seconds",
         "excess_fragmentation_byte_seconds",
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
             ".bad{color:#b00}</style></head><body>",
             "<h1>sweeperd load test</h1>",
             f"<p>Started {html.escape(str(summary.get('started', '')))}. "
             "Backing is the kernel's (st_blocks of the heap's memfd, read by the harness); "
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
    parts.append("</body></html>")
    atomic_write(path, "\n".join(parts))
