"""``sweeperd soak``: watch a running daemon over a long run and say whether it stays bounded.

Every ``every`` seconds it asks the daemon for ``status`` and prints one line: elapsed time,
cycles, deaths, and per process (by role and slot) its private memory (``RssAnon``, what a
leak grows) and open descriptors, with the ``status`` round trip.  At the end it prints a
summary — per process, the growth of private memory after the first minute (a warm-up: numpy
and malloc reach their working set) and the change in descriptors — as text or JSON.
Memory figures are the kernel's (``/proc/PID/status``, ``/proc/PID/fd``), read by the daemon
for its own processes.  A process replaced during the watch is compared from its
replacement's first sample.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TextIO

WARMUP_S = 60.0


def _sample(st: dict[str, Any], t: float, rtt_ms: float) -> dict[str, Any]:
    return {"t": round(t, 1), "cycle": st["cycle"], "deaths": st["deaths"],
            "status_ms": round(rtt_ms, 1),
            "procs": {f'{p["role"]}{p["id"]}': {"pid": p["pid"],
                                                 "anon_mib": round(p["anon_bytes"] / 2**20, 2),
                                                 "fds": p["fds"]}
                      for p in st["memory"]["processes"]}}


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth per process after the warm-up (or from its first sample, if replaced later)."""
    out: dict[str, Any] = {}
    if not samples:
        return {"samples": 0}
    last = samples[-1]
    for name, p in last["procs"].items():
        mine = [s for s in samples if s["procs"].get(name, {}).get("pid") == p["pid"]]
        warm = [s for s in mine if s["t"] - mine[0]["t"] >= WARMUP_S] or mine
        base = warm[0]["procs"][name]
        out[name] = {"anon_mib_start": mine[0]["procs"][name]["anon_mib"],
                     "anon_mib_after_warmup": base["anon_mib"], "anon_mib_end": p["anon_mib"],
                     "anon_growth_mib": round(p["anon_mib"] - base["anon_mib"], 2),
                     "fds_start": mine[0]["procs"][name]["fds"], "fds_end": p["fds"],
                     "watched_s": round(last["t"] - mine[0]["t"], 1)}
    rtts = sorted(s["status_ms"] for s in samples)
    return {"samples": len(samples), "seconds": last["t"], "cycles": last["cycle"],
            "deaths": last["deaths"], "status_ms_median": rtts[len(rtts) // 2],
            "status_ms_max": rtts[-1], "processes": out}


def watch(status: Callable[[], dict[str, Any]], duration_s: float, every_s: float,
          out: TextIO, as_json: bool = False,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    t0 = clock()
    samples: list[dict[str, Any]] = []
    while True:
        t = clock()
        st = status()
        s = _sample(st, t - t0, (clock() - t) * 1e3)
        samples.append(s)
        if not as_json:
            procs = "  ".join(f'{k} {v["anon_mib"]:.1f}MiB/{v["fds"]}fd'
                              for k, v in sorted(s["procs"].items()))
            deaths = sum(s["deaths"].values())
            print(f'{s["t"]:8.1f}s cycle {s["cycle"]:7d} deaths {deaths}  '
                  f'status {s["status_ms"]:.0f}ms  {procs}', file=out, flush=True)
        if t - t0 >= duration_s:
            break
        sleep(max(0.0, min(every_s, duration_s - (clock() - t0))))
    summary = summarize(samples)
    if as_json:
        print(json.dumps(summary), file=out)
    else:
        print(f"after {summary['seconds']}s: {summary['cycles']} cycles, deaths "
              f"{summary['deaths']}, status {summary['status_ms_median']} ms median", file=out)
        for name, p in sorted(summary["processes"].items()):
            print(f"  {name:14s} private {p['anon_mib_after_warmup']:7.1f} -> "
                  f"{p['anon_mib_end']:7.1f} MiB ({p['anon_growth_mib']:+.2f} after warm-up), "
                  f"fds {p['fds_start']} -> {p['fds_end']}", file=out)
    return summary
