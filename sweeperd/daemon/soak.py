"""``sweeperd soak``: watch a running daemon over a long run and say whether it stays bounded.

Every ``every`` seconds (on a fixed grid from its start: a slow sample delays the next, it
does not shift the ones after; a tick missed entirely is skipped, and the last sample is at
``duration``) it asks the daemon for ``status`` and prints one line: elapsed time,
cycles, deaths, and per process (by role and slot) its private memory (``RssAnon``, what a
leak grows) and open descriptors, with the ``status`` round trip.  At the end it prints a
summary — per process, the growth of private memory after the first minute (a warm-up: numpy
and malloc reach their working set), of its floor and of its median (last window against the
first), its least-squares trend, and the change in descriptors — as text or JSON.  A
mutator's memory is its live set plus its mark's temporaries and swings by 100 MiB within a
cycle, so one sample against another says little; the floor and the median tell a leak apart.
Memory figures are the kernel's (``/proc/PID/status``, ``/proc/PID/fd``), read by the daemon
for its own processes.  A process replaced during the watch is compared from its
replacement's first sample.

It also times the service as its users meet it: the ``status`` round trip of every sample and,
given a scrape function, ``SCRAPES`` Prometheus scrapes per sample (percentiles over the run),
and it reports each process's CPU seconds over the watch (``/proc/PID/stat``) and their share
of one core.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any, TextIO

WARMUP_S = 60.0
SCRAPES = 5  # scrapes timed per sample
WINDOW_S = 300.0  # the windows the floor and median growths compare (at most a quarter each)


def _sample(st: dict[str, Any], t: float, rtt_ms: float,
            scrape_ms: list[float]) -> dict[str, Any]:
    return {"t": round(t, 1), "cycle": st["cycle"], "deaths": st["deaths"],
            "status_ms": round(rtt_ms, 1), "scrape_ms": [round(x, 2) for x in scrape_ms],
            "procs": {f'{p["role"]}{p["id"]}': {"pid": p["pid"],
                                                 "anon_mib": round(p["anon_bytes"] / 2**20, 2),
                                                 "fds": p["fds"],
                                                 "cpu_s": p.get("cpu_seconds", 0.0)}
                      for p in st["memory"]["processes"]}}


def _slope_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB an hour: a leak's trend, where
    the end-minus-start difference also carries a live set's ups and downs."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return round(sum((t - mt) * (v - mv) for t, v in points) / var * 3600, 2)


def _windows(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Values of the first and the last window of ``points`` (``WINDOW_S``, at most a quarter
    of the span each)."""
    if not points:
        return [], []
    t0, t1 = points[0][0], points[-1][0]
    w = min(WINDOW_S, (t1 - t0) / 4) if t1 > t0 else 0.0
    first = [v for t, v in points if t <= t0 + w]
    last = [v for t, v in points if t >= t1 - w]
    return first, last


def _pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``xs``; 0 for none."""
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * len(xs) + 0.5) - 1))]


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
        first = mine[0]["procs"][name]
        watched = last["t"] - mine[0]["t"]
        cpu = round(p["cpu_s"] - first["cpu_s"], 2)
        early, late = _windows([(x["t"], x["procs"][name]["anon_mib"]) for x in warm])
        out[name] = {"anon_mib_start": first["anon_mib"],
                     # a leak raises the floor (what stays held between bursts) and the median;
                     # a live set that swings within a cycle moves neither much
                     "anon_floor_growth_mib": round(min(late) - min(early), 2) if late else 0.0,
                     "anon_median_growth_mib": round(_pct(late, 0.5) - _pct(early, 0.5), 2),
                     "anon_slope_mib_per_h": _slope_per_h(
                         [(x["t"], x["procs"][name]["anon_mib"]) for x in warm]),
                     "anon_mib_after_warmup": base["anon_mib"], "anon_mib_end": p["anon_mib"],
                     "anon_growth_mib": round(p["anon_mib"] - base["anon_mib"], 2),
                     "fds_start": mine[0]["procs"][name]["fds"], "fds_end": p["fds"],
                     "watched_s": round(watched, 1), "cpu_seconds": cpu,
                     "cpu_share": round(cpu / watched, 3) if watched > 0 else 0.0}
    rtts = [s["status_ms"] for s in samples]
    scrapes = [x for s in samples for x in s["scrape_ms"]]
    return {"samples": len(samples), "seconds": last["t"], "cycles": last["cycle"],
            "deaths": last["deaths"], "status_ms_median": _pct(rtts, 0.5),
            "status_ms_p99": _pct(rtts, 0.99), "status_ms_max": max(rtts),
            "scrapes": len(scrapes), "scrape_ms_p50": _pct(scrapes, 0.5),
            "scrape_ms_p99": _pct(scrapes, 0.99),
            "scrape_ms_max": max(scrapes) if scrapes else 0.0, "processes": out}


def watch(status: Callable[[], dict[str, Any]], duration_s: float, every_s: float,
          out: TextIO, as_json: bool = False,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep,
          scrape: Callable[[], None] | None = None) -> dict[str, Any]:
    if not (0 < every_s < math.inf and 0 <= duration_s < math.inf):
        raise ValueError(f"every_s must be > 0 and duration_s >= 0, got {every_s}, {duration_s}")
    t0 = clock()
    samples: list[dict[str, Any]] = []
    tick = 0
    while True:
        t = clock()
        st = status()
        rtt = (clock() - t) * 1e3
        scrape_ms = []
        if scrape is not None:
            for _ in range(SCRAPES):
                ts = clock()
                scrape()
                scrape_ms.append((clock() - ts) * 1e3)
        s = _sample(st, t - t0, rtt, scrape_ms)
        samples.append(s)
        if not as_json:
            procs = "  ".join(f'{k} {v["anon_mib"]:.1f}MiB/{v["fds"]}fd'
                              for k, v in sorted(s["procs"].items()))
            deaths = sum(s["deaths"].values())
            scr = f'scrape {max(scrape_ms):.1f}ms  ' if scrape_ms else ""
            print(f'{s["t"]:8.1f}s cycle {s["cycle"]:7d} deaths {deaths}  '
                  f'status {s["status_ms"]:.0f}ms  {scr}{procs}', file=out, flush=True)
        if t - t0 >= duration_s:
            break
        tick = max(tick + 1, math.floor((clock() - t0) / every_s) + 1)  # the next one ahead
        sleep(max(0.0, t0 + min(tick * every_s, duration_s) - clock()))
    summary = summarize(samples)
    if as_json:
        print(json.dumps(summary), file=out)
    else:
        print(f"after {summary['seconds']}s: {summary['cycles']} cycles, deaths "
              f"{summary['deaths']}, status {summary['status_ms_median']} ms median "
              f"({summary['status_ms_p99']} p99), scrape {summary['scrape_ms_p50']} ms p50 "
              f"({summary['scrape_ms_p99']} p99, {summary['scrapes']} scrapes)", file=out)
        for name, p in sorted(summary["processes"].items()):
            print(f"  {name:14s} private {p['anon_mib_start']:7.1f} / "
                  f"{p['anon_mib_after_warmup']:7.1f} -> {p['anon_mib_end']:7.1f} MiB "
                  f"({p['anon_growth_mib']:+.2f} after warm-up, floor "
                  f"{p['anon_floor_growth_mib']:+.2f}, median {p['anon_median_growth_mib']:+.2f},"
                  f" trend {p['anon_slope_mib_per_h']:+.1f} MiB/h), fds {p['fds_start']} -> "
                  f"{p['fds_end']}, cpu {p['cpu_seconds']:.1f} s ({p['cpu_share']:.0%})",
                  file=out)
    return summary
