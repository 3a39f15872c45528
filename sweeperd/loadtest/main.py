"""``sweeperd loadtest``: scenarios x policies on the real daemon, and the report.

Theory of operation
-------------------
Everything is decided and checked before the first daemon starts: the scenarios (shipped
names, files, or a Go gctrace to replay), scaled to ``--scale`` and ``--heap-mib``, and the
policies (``--policy``, default all of the policy lab's).  A bad one exits 2 naming it.  Then
each scenario x policy runs in turn (:func:`sweeperd.loadtest.runner.run_one`; one daemon at a
time), with progress on stderr — a bar on a terminal, a line every few seconds otherwise.
``--out`` must be a new or empty directory of this user's, and no symlink
(:mod:`sweeperd.loadtest.outdir`); it is made, mode 0700, before the first daemon starts.
After the runs (failed ones too) the output directory gets ``summary.json`` first, then one
CSV of samples per run, the plots and ``report.html``, each written atomically.  The exit
status is 0 when every run was ok, 1 otherwise; the report is written either way.  A file
that cannot be written (a full disk) is named on stderr, the summary is printed to stdout as
JSON whatever ``--json`` says (nothing measured is lost), and the exit is
:data:`EXIT_CANNOT_WRITE`.  Ctrl-C or SIGTERM stops the run in progress (its daemon is
stopped too), writes the report of the runs done, and exits 130.
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

from sweeperd.loadtest import compare, report
from sweeperd.loadtest.outdir import CannotWrite, OutDir, OutDirError
from sweeperd.loadtest.runner import RunResult, run_one
from sweeperd.loadtest.sampler import SAMPLE_S
from sweeperd.loadtest.summary import finite_or_none, summarize
from sweeperd.pacing.names import POLICIES
from sweeperd.workload import scenario as scenarios
from sweeperd.workload.scenario import Scenario, ScenarioError

GO_RUNTIME = "go-runtime"  # the policy name of the --go-reference rows
EXIT_CANNOT_WRITE = 74  # a report file could not be written (sysexits' EX_IOERR)


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

            trace, note = replay.read_trace(o.replay)
            try:
                sc = replay.to_scenario(trace, o.scale, o.heap_mib, note=note)
            except ScenarioError as e:
                raise ScenarioError(f"--replay {o.replay}: {e}") from None
            replays[sc.name] = trace
            chosen.append(sc)
        for sc in chosen:  # what each child will read back: refused here, not in every child
            scenarios.parse(sc.to_toml(), f"scenario {sc.name} (as the daemon reads it)")
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
    try:
        out = OutDir.create(p.out)
    except OutDirError as e:
        raise UsageError(str(e)) from None
    try:
        return _loadtest(o, p, out, err, out_stream)
    finally:
        out.close()


def _failed(sc: Scenario, policy: str, e: Exception) -> RunResult:
    return RunResult(sc.name, policy, ok=False, error=str(e))


def _loadtest(o: Options, p: Plan, out: OutDir, err: TextIO, out_stream: TextIO) -> int:
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
                try:
                    res = run_one(sc, policy, out.subdir("runs", f"{sc.name}-{policy}"),
                                  o.sample_s, prog.run(k, sc, policy))
                except CannotWrite as e:  # its config: the run cannot start
                    res = _failed(sc, policy, e)
                prog.done(res)
                results.append((sc, res))
            if o.go_reference:
                from sweeperd.loadtest import goref

                k += 1
                try:
                    res = goref.run(sc, out.subdir("runs", f"{sc.name}-go-runtime"),
                                    o.sample_s, prog.run(k, sc, goref.POLICY))
                except CannotWrite as e:
                    res = _failed(sc, goref.POLICY, e)
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
    rc = finish(p, out, results, started, versions(extra_versions), o.json, err, out_stream)
    if rc:
        return rc
    if interrupted:
        return 130
    return 0 if all(r.ok for _, r in results) else 1


def finish(p: Plan, out: OutDir, results: list[tuple[Scenario, RunResult]], started: str,
           vers: dict[str, str], as_json: bool, err: TextIO, out_stream: TextIO) -> int:
    """Write the report and print the summary; 0, or :data:`EXIT_CANNOT_WRITE` when a file
    could not be written: then it is named on ``err`` and the summary JSON goes to
    ``out_stream`` whatever ``as_json`` says, so that no figure is lost."""
    summary = summarize_runs(p, results, started, vers)
    try:
        write_report(p, out, results, summary)
    except CannotWrite as e:
        print(f"sweeperd loadtest: {e}; the summary follows on stdout", file=err, flush=True)
        print(json.dumps(summary, indent=2), file=out_stream, flush=True)
        return EXIT_CANNOT_WRITE
    if as_json:
        print(json.dumps(summary, indent=2), file=out_stream)
    else:
        print_table(summary, out_stream)
        print(f"report: {p.out / 'report.html'}", file=out_stream)
    return 0


def summarize_runs(p: Plan, results: list[tuple[Scenario, RunResult]], started: str,
                   vers: dict[str, str]) -> dict[str, Any]:
    """``summary.json``'s content (pure: nothing is written)."""
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
    return {"started": started, "runs": runs, "machine": machine(), "versions": vers,
            **compare.analyse(runs)}  # groups, fidelity, recommendation


def write_report(p: Plan, out: OutDir, results: list[tuple[Scenario, RunResult]],
                 summary: dict[str, Any]) -> None:
    """``summary.json`` first (the figures), then the CSVs, plots and ``report.html``; each
    atomically.  :class:`CannotWrite` naming the first file that could not be written."""
    out.write("summary.json", json.dumps(summary, indent=2) + "\n")
    for sc, res in results:
        if res.rows:
            out.write(f"{sc.name}-{res.policy}.csv", report.csv_text(res.rows))
    plots = {}
    for sc in p.scenarios:
        mine = [(r.policy, r.rows) for s, r in results if s is sc and r.rows]
        starts, t = [], 0.0
        for i, ph in enumerate(sc.phase):
            starts.append((t, ph.name or f"phase {i}"))
            t += ph.seconds
        out.verify()
        plots[sc.name] = report.plot_scenario(out.path, sc.name, mine, starts)
    out.verify()
    report.write_html(out.path / "report.html", summary, plots,
                      {sc.name: sc.to_toml() for sc in p.scenarios})


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
