"""``sweeperd loadtest``: scenarios x policies on the real daemon, and the report.

Theory of operation
-------------------
Everything is decided and checked before the first daemon starts: the scenarios (shipped
names, files, or a Go gctrace to replay), scaled to ``--scale`` and ``--heap-mib``, and the
policies (``--policy``, default all of the policy lab's).  A bad one exits 2 naming it.  Then
each scenario x policy runs in turn (:func:`sweeperd.loadtest.runner.run_one`; one daemon at a
time), with progress on stderr — a bar on a terminal, a line every few seconds otherwise.
After the runs (failed ones too) the output directory gets one CSV of samples per run, the
plots, ``summary.json`` and ``report.html``.  The exit status is 0 when every run was ok, 1
otherwise; the report is written either way.  Ctrl-C or SIGTERM stops the run in progress
(its daemon is stopped too), writes the report of the runs done, and exits 130.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sweeperd.loadtest import report
from sweeperd.loadtest.runner import RunResult, run_one
from sweeperd.loadtest.sampler import SAMPLE_S
from sweeperd.loadtest.summary import finite_or_none, summarize
from sweeperd.pacing.names import POLICIES
from sweeperd.workload import scenario as scenarios
from sweeperd.workload.scenario import Scenario, ScenarioError

GO_RUNTIME = "go-runtime"  # the policy name of the --go-reference rows


class Interrupted(BaseException):
    """SIGTERM, raised where the main thread is, so that ``finally`` blocks stop the daemon."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted


class UsageError(ValueError):
    """Bad flags or inputs: exit 2 with this text."""


@dataclass
class Options:
    scenarios: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    out: Path | None = None
    heap_mib: int | None = None
    scale: float = 1.0
    replay: str | None = None
    go_reference: bool = False
    json: bool = False
    sample_s: float = SAMPLE_S


def parse_policies(text: str | None) -> list[str]:
    if not text:
        return list(POLICIES)
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad or not names:
        raise UsageError(f"--policy: unknown {', '.join(bad) or '(empty)'}; "
                         f"known: {', '.join(POLICIES)}")
    return list(dict.fromkeys(names))


@dataclass
class Plan:
    scenarios: list[Scenario]
    replays: dict[str, Any]  # scenario name -> its parsed trace (for the fit)
    policies: list[str]
    out: Path


def plan(o: Options) -> Plan:
    """Every input resolved and checked; UsageError naming the bad one."""
    if not (o.sample_s > 0 and o.sample_s <= SAMPLE_S):
        raise UsageError(f"the sample period must be in (0, {SAMPLE_S}] s")
    if o.heap_mib is not None and not 1 <= o.heap_mib <= 16384:
        raise UsageError(f"--heap-mib must be within 1..16384, got {o.heap_mib}")
    chosen: list[Scenario] = []
    replays: dict[str, Any] = {}
    try:
        names = o.scenarios or ([] if o.replay else sorted(scenarios.shipped()))
        for n in names:
            chosen.append(scenarios.load(n).scaled(o.scale, o.heap_mib))
        if o.replay:
            from sweeperd.loadtest import replay

            trace = replay.load_trace(o.replay)
            sc = replay.to_scenario(trace, o.scale, o.heap_mib)
            replays[sc.name] = trace
            chosen.append(sc)
    except ScenarioError as e:
        raise UsageError(str(e)) from None
    seen = [s.name for s in chosen]
    if len(set(seen)) != len(seen):
        raise UsageError(f"scenario names repeat: {', '.join(seen)}")
    out = o.out or Path(f"loadtest-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}")
    return Plan(chosen, replays, o.policies, out)


class Progress:
    """A bar per run on a terminal (rich), else a plain line every ``every`` seconds."""

    def __init__(self, stream: TextIO, total_runs: int, every: float = 5.0) -> None:
        self.stream, self.total, self.every = stream, total_runs, every
        self.tty = stream.isatty()
        self._bar: Any = None
        self._last = 0.0

    def run(self, k: int, sc: Scenario, policy: str) -> Callable[[float], None]:
        label = f"[{k}/{self.total}] {sc.name} x {policy}"
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            if self._bar is None:
                self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                                     TimeRemainingColumn(), transient=False)
                self._bar.start()
            task = self._bar.add_task(label, total=sc.seconds)
            return lambda t: self._bar.update(task, completed=min(t, sc.seconds))
        print(f"{label}: starting ({sc.seconds:g} s)", file=self.stream, flush=True)

        def line(t: float) -> None:
            now = time.monotonic()
            if now - self._last >= self.every:
                self._last = now
                print(f"{label}: {t:5.1f}/{sc.seconds:g} s", file=self.stream, flush=True)
        return line

    def done(self, res: RunResult) -> None:
        if not self.tty:
            state = "ok" if res.ok else f"FAILED ({res.error})"
            print(f"  {res.scenario} x {res.policy}: {state} in {res.wall_s:.1f} s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    u = os.uname()
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_total_bytes": mem,
            "kernel": f"{u.sysname} {u.release}", "arch": u.machine}


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("sweeperd", "numpy", "pyzmq", "prometheus-client", "msgspec", "matplotlib",
                "multiprocess"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out.update(extra or {})
    return out


def loadtest(o: Options, err: TextIO = sys.stderr, out_stream: TextIO = sys.stdout) -> int:
    p = plan(o)
    p.out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    runs_per = len(p.policies) + (1 if o.go_reference else 0)
    prog = Progress(err, len(p.scenarios) * runs_per)
    results: list[tuple[Scenario, RunResult]] = []
    extra_versions: dict[str, str] = {}
    k = 0
    interrupted = False
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for sc in p.scenarios:
            for policy in p.policies:
                k += 1
                res = run_one(sc, policy, p.out / "runs" / f"{sc.name}-{policy}",
                              o.sample_s, prog.run(k, sc, policy))
                prog.done(res)
                results.append((sc, res))
            if o.go_reference:
                from sweeperd.loadtest import goref

                k += 1
                res = goref.run(sc, p.out / "runs" / f"{sc.name}-go-runtime", o.sample_s,
                                prog.run(k, sc, goref.POLICY))
                extra_versions["go"] = goref.go_version()
                prog.done(res)
                results.append((sc, res))
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        print("sweeperd loadtest: interrupted; writing the report of the runs done",
              file=err, flush=True)
    finally:
        signal.signal(signal.SIGTERM, old)
        prog.close()
    summary = write_report(p, results, started, versions(extra_versions))
    if o.json:
        print(json.dumps(summary, indent=2), file=out_stream)
    else:
        print_table(summary, out_stream)
        print(f"report: {p.out / 'report.html'}", file=out_stream)
    if interrupted:
        return 130
    return 0 if all(r.ok for _, r in results) else 1


def write_report(p: Plan, results: list[tuple[Scenario, RunResult]], started: str,
                 vers: dict[str, str]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for sc, res in results:
        entry = summarize(sc, res.policy, res.rows, res.ok)
        if res.policy == GO_RUNTIME:  # figures Go 1.19 does not expose
            from sweeperd.loadtest import goref

            entry.update(dict.fromkeys(goref.NOT_MEASURED))
        if not res.ok:
            entry["error"] = res.error
            entry["log_tail"] = res.log_tail
        if sc.name in p.replays:
            from sweeperd.loadtest import replay

            start = res.rows[-1]["scenario_start_s"] if res.rows else 0.0
            entry["trace_fit"] = replay.fit(p.replays[sc.name], res.gctrace, sc, start)
        runs.append({k: finite_or_none(v) for k, v in entry.items()})
        if res.rows:
            report.write_csv(p.out / f"{sc.name}-{res.policy}.csv", res.rows)
    summary = {"started": started, "runs": runs, "machine": machine(), "versions": vers}
    (p.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = {}
    for sc in p.scenarios:
        mine = [(r.policy, r.rows) for s, r in results if s is sc and r.rows]
        starts, t = [], 0.0
        for i, ph in enumerate(sc.phase):
            starts.append((t, ph.name or f"phase {i}"))
            t += ph.seconds
        plots[sc.name] = report.plot_scenario(p.out, sc.name, mine, starts)
    report.write_html(p.out / "report.html", summary, plots,
                      {sc.name: sc.to_toml() for sc in p.scenarios})
    return summary


def print_table(summary: dict[str, Any], out: TextIO) -> None:
    cols = ("scenario", "policy", "ok", "peak_backed_bytes", "mean_backed_bytes",
            "excess_byte_seconds", "seconds_to_retain_goal", "scavenger_cpu_seconds",
            "madvise_calls", "alloc_latency_p99_seconds")
    heads = ("scenario", "policy", "ok", "peak MiB", "mean MiB", "excess MiB·s",
             "to goal s", "scav CPU s", "madvise", "alloc p99 ms")
    rows: list[tuple[str, ...]] = [heads]
    for r in summary["runs"]:
        rows.append(tuple(_cell(c, r.get(c)) for c in cols))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(cols))]
    for row in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)), file=out)


def _cell(k: str, v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if k.endswith("_bytes") or k == "excess_byte_seconds":
        return f"{v / (1 << 20):,.0f}"
    if k == "alloc_latency_p99_seconds":
        return f"{v * 1000:.2f}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)
