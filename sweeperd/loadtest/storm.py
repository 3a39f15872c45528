"""``sweeperd bench storm``: the mutators' allocation rate under ``alloc-storm``, against Go's
on the same scenario in the same invocation.

Theory of operation
-------------------
The shipped ``alloc-storm`` scenario asks for a 128 MiB live heap and then garbage "as fast as
the mutators can" for its ``storm`` phase.  The benchmark is a load test of that scenario with
two rows, the daemon under the ``go`` policy and the real Go program (``go-runtime``, the
release the model follows), each ``repeat`` times, written to a report directory like any load
test.  From each run's CSV it takes the allocated-bytes counter (the daemon's mutators':
``sweeperd_mutator_allocated_bytes_total``; Go's: ``/gc/heap/allocs:bytes``) and the GC cycle
counter over the storm phase, less its first second (the mutators' start of the phase: a
schedule is read between steps), and prints the rates, their medians and the ratio of the
medians, daemon over Go.

:func:`phase_rate` is pure over the CSV's rows; :func:`storm` runs the load test.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any, TextIO

from sweeperd.loadtest.main import Options, loadtest
from sweeperd.loadtest.runspec import GO_RUNTIME
from sweeperd.workload import scenario as scenarios

SCENARIO = "alloc-storm"
PHASE = "storm"
SETTLE_S = 1.0  # the phase's first second is left out of the rate


def phase_window(sc: scenarios.Scenario, phase: str = PHASE) -> tuple[float, float]:
    """Scenario seconds of ``phase`` (its first :data:`SETTLE_S` left out); ValueError if the
    scenario has no such phase, or it is too short to measure."""
    t = 0.0
    for p in sc.phase:
        if p.name == phase:
            if p.seconds <= 2 * SETTLE_S:
                raise ValueError(f"{sc.name}: phase {phase} is too short to measure "
                                 f"({p.seconds} s)")
            return t + SETTLE_S, t + p.seconds
        t += p.seconds
    raise ValueError(f"{sc.name} has no phase {phase!r}")


def phase_rate(rows: list[dict[str, float]], t0: float, t1: float) -> dict[str, float]:
    """Allocated bytes per second and GC cycles per second between scenario seconds ``t0``
    and ``t1``, from the first and last rows inside the window (the counters are cumulative).
    ValueError when fewer than two rows fall inside it."""
    inside = [r for r in rows if t0 <= r["scenario_elapsed_s"] <= t1]
    if len(inside) < 2:
        raise ValueError(f"fewer than two samples within {t0:g}..{t1:g} s of the scenario")
    a, b = inside[0], inside[-1]
    dt = b["scenario_elapsed_s"] - a["scenario_elapsed_s"]
    if dt <= 0:
        raise ValueError("the samples within the window have one time")
    return {"alloc_bytes_per_s": (b["allocated_bytes"] - a["allocated_bytes"]) / dt,
            "gc_cycles_per_s": (b["gc_cycles"] - a["gc_cycles"]) / dt, "seconds": dt}


def read_rows(path: Path) -> list[dict[str, float]]:
    """A run's CSV as rows of floats (an empty cell: NaN)."""
    with path.open(newline="") as f:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()}
                for r in csv.DictReader(f)]


def storm(out: Path | None, repeat: int = 1, seed: int | None = None,
          err: TextIO = sys.stderr, scenario: str = SCENARIO,
          phase: str = PHASE) -> dict[str, Any]:
    """Run the benchmark (the module's notes); its figures.  ``scenario`` (a shipped name or
    a file) and ``phase``: what to measure, ``alloc-storm``'s ``storm`` by default.
    UsageError on a bad argument; RuntimeError when a run failed (naming it, with the
    report directory); ValueError when the scenario has no such phase."""
    t0, t1 = phase_window(scenarios.load(scenario), phase)
    summary_dir = out or Path(f"storm-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}")
    o = Options(scenarios=[scenario], policies=f"go,{GO_RUNTIME}", repeat=repeat, seed=seed,
                out=summary_dir)
    rc = loadtest(o, err=err, out_stream=io.StringIO())  # (its table: in the report)
    summary = json.loads((summary_dir / "summary.json").read_text())
    failed = [r["run_id"] for r in summary["runs"] if not r.get("ok")]
    if rc != 0 or failed:
        raise RuntimeError(f"the load test of {scenario} failed (exit {rc}; runs "
                           f"{', '.join(failed) or 'none failed'}): see {summary_dir}")
    per: dict[str, list[dict[str, Any]]] = {"go": [], GO_RUNTIME: []}
    for r in summary["runs"]:
        fig = phase_rate(read_rows(summary_dir / f"{r['run_id']}.csv"), t0, t1)
        per[r["policy"]].append({"run_id": r["run_id"], **fig})
    med = {p: statistics.median(x["alloc_bytes_per_s"] for x in v) for p, v in per.items()}
    cyc = {p: statistics.median(x["gc_cycles_per_s"] for x in v) for p, v in per.items()}
    go_version = summary["versions"].get("go")
    return {
        "bench": "storm", "scenario": summary["runs"][0]["scenario"], "phase": phase,
        "window_s": [t0, t1], "repeat": repeat, "out": str(summary_dir), "go_version": go_version,
        "alloc_bytes_per_s": med["go"], "go_alloc_bytes_per_s": med[GO_RUNTIME],
        "ratio_to_go": med["go"] / med[GO_RUNTIME] if med[GO_RUNTIME] > 0 else None,
        "gc_cycles_per_s": cyc["go"], "go_gc_cycles_per_s": cyc[GO_RUNTIME],
        "runs": per["go"], "go_runs": per[GO_RUNTIME],
    }

