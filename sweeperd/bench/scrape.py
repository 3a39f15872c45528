"""The scrape benchmark: what one Prometheus scrape of a running daemon costs, by heap size.

Theory of operation
-------------------
For each heap size it starts a real ``sweeperd run`` (a child process: two sweepers, two
mutators, the scavenger) on a generated scenario whose mutators ramp to a live heap of an
eighth of the arena and then hold it (long-lived objects: at 16 GiB the span table is big and
full of in-use spans) while allocating garbage, waits for the ramp to end, then GETs
``/metrics`` back to back (one every ``interval`` seconds) for ``seconds`` and records each
scrape's wall time, from the connect to the body's last byte (a bare socket, as a scraper's
client costs next to nothing; urllib would add its own milliseconds).  The daemon is stopped
(SIGTERM, then SIGKILL after a grace period) and its output kept in a temporary file removed
after.

The figure that matters is the p99 of the largest size against the p99 of the smallest,
measured in the same run: every figure a scrape reads must cost O(1) in the heap's size (the
heap's running counters and tallies, ``fstat`` of the memfds, ``Shmem``; PSS comes from a
sampler thread), so the ratio should stay near 1.  Goal: p99 at 16 GiB <= 10 ms and <= 1.2x
the 256 MiB figure.  Measured, not asserted: this is a benchmark, not a test.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1 << 20
GOAL_P99_MS = 10.0
GOAL_RATIO = 1.2
START_S = 300.0  # a 16 GiB daemon maps and starts in seconds; this is a generous bound
RAMP_MIB_S = 256.0  # the scenario's ramp rate (two mutators keep up with it here)


def scenario_toml(heap_mib: int, hold_s: float) -> tuple[str, float]:
    """The scenario: ramp to an eighth of the heap live, then hold it with some garbage;
    returns (its TOML, the ramp's seconds)."""
    live = heap_mib / 8
    ramp = max(1.0, live / RAMP_MIB_S)
    garbage = min(64.0, live)
    text = (f'[scenario]\nname = "scrape-bench"\nheap_mib = {heap_mib}\n\n'
            f'[[phase]]\nname = "ramp"\nseconds = {ramp:.3f}\nlive_mib = [0, {live:.3f}]\n'
            f'garbage_mib_s = {garbage:.3f}\nsize_classes = [2, 6, 20]\n\n'
            f'[[phase]]\nname = "hold"\nseconds = {max(1.0, hold_s) + 60:.3f}\n'
            f'live_mib = {live:.3f}\ngarbage_mib_s = {garbage:.3f}\nsize_classes = [2, 6, 20]\n')
    return text, ramp


def _metric(body: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    return float(m.group(1)) if m else None


def _get(url: str) -> tuple[float, str]:
    """One scrape as a scraper makes it, timed from the connect to the body's last byte.

    A bare socket and one HTTP/1.0 request, not urllib: urllib's own Python (a millisecond or
    two per request on this machine, more under load) would be counted as the daemon's."""
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    req = f"GET {u.path or '/'} HTTP/1.0\r\nHost: {u.netloc}\r\n\r\n".encode()
    t = time.perf_counter()
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(req)
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    dt = time.perf_counter() - t
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.") or status.split()[1:2] != [b"200"]:
        raise RuntimeError(f"GET {url}: {status.decode(errors='replace')!r}")
    return dt, body.decode()


class _Daemon:
    """A ``sweeperd run`` child whose output goes to a file (no pipe to fill)."""

    def __init__(self, workdir: Path, heap_mib: int, scenario: Path) -> None:
        self.log = workdir / f"daemon-{heap_mib}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sweeperd.cli", "run", "--heap-mib", str(heap_mib),
                 "--sweepers", "2", "--mutators", "2", "--scenario", str(scenario),
                 "--control", f"ipc://{workdir}/control-{heap_mib}.sock",  # private, ours
                 "--metrics-addr", "127.0.0.1:0"],
                stdout=out, stderr=subprocess.STDOUT, text=True)

    def metrics_url(self) -> str:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if m := re.search(r"metrics on (http://\S+)", self.log.read_text()):
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"sweeperd run did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def scrape_one(workdir: Path, heap_mib: int, seconds: float, interval: float) -> dict[str, Any]:
    """Start a daemon of ``heap_mib``, let its ramp finish, scrape it for ``seconds``."""
    text, ramp = scenario_toml(heap_mib, seconds)
    scen = workdir / f"scrape-{heap_mib}.toml"
    scen.write_text(text)
    d = _Daemon(workdir, heap_mib, scen)
    try:
        url = d.metrics_url()
        deadline = time.monotonic() + START_S + ramp * 20
        while True:  # until the ramp is over (the scenario's own clock, from the scrape)
            _, body = _get(url)
            elapsed = _metric(body, "sweeperd_scenario_elapsed_seconds") or 0.0
            if elapsed >= ramp:
                break
            if time.monotonic() > deadline or d.proc.poll() is not None:
                raise RuntimeError(f"the {heap_mib} MiB daemon's ramp did not end: "
                                   f"{d.log.read_text()[-2000:]}")
            time.sleep(0.2)
        times: list[float] = []
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            dt, body = _get(url)
            times.append(dt)
            time.sleep(interval)
        if d.proc.poll() is not None:
            raise RuntimeError(f"the {heap_mib} MiB daemon died: {d.log.read_text()[-2000:]}")
        ms = np.array(times) * 1e3
        return {
            "heap_mib": heap_mib, "scrapes": int(ms.size),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean()),
            "live_bytes": _metric(body, "sweeperd_heap_live_bytes"),
            "objects_bytes": _metric(body, "sweeperd_heap_objects_bytes"),
            "arena_backed_bytes": _metric(body, "sweeperd_heap_backed_bytes"),
            "gc_cycles": _metric(body, "sweeperd_gc_cycles_total"),
            "body_bytes": len(body.encode()),
        }
    finally:
        code = d.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"sweeperd bench scrape: the {heap_mib} MiB daemon exited {code}",
                  file=sys.stderr)


def bench_scrape(sizes_mib: list[int], seconds: float, interval: float = 0.05) -> dict[str, Any]:
    """Scrape a real daemon of each size in turn; p50/p99 per size, and the p99 of the last
    size against the first's (the goal: <= 1.2x and <= 10 ms)."""
    if not sizes_mib or any(s <= 0 for s in sizes_mib):
        raise ValueError("--heap-mib takes positive sizes in MiB, e.g. 256,16384")
    if seconds <= 0 or interval < 0:
        raise ValueError("--seconds must be positive and --interval not negative")
    with tempfile.TemporaryDirectory(prefix="sweeperd-bench-scrape-") as tmp:
        rows = [scrape_one(Path(tmp), s, seconds, interval) for s in sizes_mib]
    first, last = rows[0], rows[-1]
    ratio = last["p99_ms"] / first["p99_ms"] if first["p99_ms"] else float("inf")
    return {
        "bench": "scrape", "seconds": seconds, "interval_s": interval, "cpus": os.cpu_count(),
        "sizes": rows, "p99_ratio": ratio,
        "goal": {"p99_ms": GOAL_P99_MS, "p99_ratio": GOAL_RATIO},
        "meets_goal": last["p99_ms"] <= GOAL_P99_MS and ratio <= GOAL_RATIO,
    }
