"""The ``sweeperd`` command line.  Bad flags exit 2 with a message naming the flag."""

from __future__ import annotations

import argparse
import json
import sys


def _bench_sweep(args: argparse.Namespace) -> int:
    from .bench import SweepBenchConfig, bench_sweep

    cfg = SweepBenchConfig(
        spans=args.spans,
        size_class=args.size_class,
        live=args.live,
        heap_mib=args.heap_mib,
        batch=args.batch,
        rounds=args.rounds,
    )
    try:
        cfg.validate()
        counts = _int_list(args.workers, "--workers") if args.workers is not None else None
    except ValueError as e:
        print(f"sweeperd bench sweep: {e}", file=sys.stderr)
        return 2
    if counts:
        from .bench import bench_sweep_processes

        result = bench_sweep_processes(cfg, counts)
    else:
        result = bench_sweep(cfg)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not vals or any(not 1 <= v <= 64 for v in vals):
        raise ValueError(f"{flag} takes worker counts within 1..64, got {text!r}")
    return vals


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
    bs.add_argument("--batch", type=int, default=65_536, help="spans per claimed batch")
    bs.add_argument("--rounds", type=int, default=3, help="rounds; the fastest is reported")
    bs.add_argument("--workers", default=None,
                    help="comma-separated sweeper process counts, e.g. 1,2 (default: sweep "
                         "in this process)")
    bs.add_argument("--json", action="store_true", help="print one JSON object")
    bs.set_defaults(func=_bench_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
