"""The figures of one run, from its samples: pure code over the rows and the scenario.

Definitions (``summary.json``'s contract; the README's "Load testing" says how to read them):

* ``peak_backed_bytes``, ``mean_backed_bytes``, ``end_backed_bytes``: the kernel's backing of
  the heap arena (read by the harness, not the daemon), its maximum, its time-weighted mean
  and its last sample's;
* ``excess_byte_seconds``: ∫ (backed − live heap) dt, the live heap being what the last GC
  marked — memory held beyond need, over time (trapezoids between samples);
* ``excess_garbage_byte_seconds``, ``excess_free_byte_seconds``,
  ``excess_fragmentation_byte_seconds``: the same integral of each of the three debts the
  excess splits into at every sample (the CSV's ``garbage_bytes``, ``free_backed_bytes`` and
  ``fragmentation_bytes``; :func:`sweeperd.loadtest.sampler.excess_split`): uncollected
  garbage (the GC's lag), free pages still backed (the scavenger's), free slots of in-use
  spans.  They add up to ``excess_byte_seconds`` (to float rounding: the same trapezoids);
* ``free_hold_seconds``: ``excess_free_byte_seconds`` over the bytes the heap gave up from
  its peak to the live heap at the end (``peak_backed_bytes`` − the last sample's live heap):
  how long, on average, a byte the peak took stayed backed and free — the release policy's
  pace, whatever the heap's size at its peak (a GC'd heap grows to its heap goal, about
  (1 + GOGC/100) x live; a malloc heap to about its live bytes); null when the heap never
  rose above its end;
* ``seconds_to_retain_goal``: from the scenario's last drop (or its last phase's start if it
  never drops) until the backing is first at or below the retain goal the run settles at
  (the largest retain goal of its last fifth); null if never;
* ``scavenger_cpu_seconds``: CPU spent giving memory back: the scavenger process's CPU by
  ``/proc`` from the scenario's start (its idle wakes included), plus the CPU the freers spent
  in their own releases (``eager``: ``sweeperd_scavenge_released_on_free_cpu_seconds``, their
  thread time);
* every counter is counted from the run's first row, taken when the scenario starts (the
  first mutator resumed): the workers' start-up is nobody's policy;
* ``released_bytes``, ``madvise_calls``, ``gc_cycles``, ``worker_deaths``: the daemon's
  counters, last sample less first;
* ``alloc_bytes_per_s``, ``alloc_vs_schedule``: the mutators' allocation over the run, per
  second and as a share of what the scenario asked (:func:`alloc_figures`); the Go row's from
  ``/gc/heap/allocs:bytes``;
* ``alloc_latency_p50/p99_seconds``: quantiles of ``sweeperd_mutator_alloc_seconds`` over the
  run, interpolated within a bucket as Prometheus' ``histogram_quantile`` does;
* ``max_books_vs_kernel_error``: the largest |books − kernel| / kernel of any sample, the books
  being the heap size less the released bytes of ``/metrics``.
"""

from __future__ import annotations

import math
from typing import Any

from sweeperd.loadtest.sampler import SPLIT
from sweeperd.roles import Role
from sweeperd.workload.mutator import ALLOC_BUCKETS
from sweeperd.workload.scenario import Scenario

GIB = 1 << 30
SETTLED_FRACTION = 0.2  # the retain goal the run settles at: the largest of its last fifth


def quantile(q: float, counts: list[float]) -> float | None:
    """The ``q`` quantile of a histogram with cumulative ``counts`` per ALLOC_BUCKETS bound and
    the total last (``+Inf``); None with no observations."""
    assert len(counts) == len(ALLOC_BUCKETS) + 1, "counts: one per bucket and the total"
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    lo, below = 0.0, 0.0
    for b, c in zip(ALLOC_BUCKETS, counts, strict=False):
        if c >= rank:
            return lo + (b - lo) * ((rank - below) / (c - below) if c > below else 1.0)
        lo, below = b, c
    return ALLOC_BUCKETS[-1]  # in the +Inf bucket: its lower bound, as Prometheus does


def integral(xs: list[float], ys: list[float]) -> float:
    return sum((xs[i] - xs[i - 1]) * (ys[i] + ys[i - 1]) / 2 for i in range(1, len(xs)))


def settle_from(sc: Scenario) -> float:
    drop = sc.last_drop()
    if drop is not None:
        return drop
    return sc.seconds - sc.phase[-1].seconds


def seconds_to_goal(ts: list[float], backed: list[float], goals: list[float],
                    since: float) -> float | None:
    if not ts:
        return None
    tail = [g for t, g in zip(ts, goals, strict=True) if t >= ts[-1] * (1 - SETTLED_FRACTION)]
    goal = max(tail) if tail else goals[-1]
    for t, b in zip(ts, backed, strict=True):
        if t >= since and b <= goal:
            return t - since
    return None


def summarize(sc: Scenario, policy: str, rows: list[dict[str, float]], ok: bool,
              scavenger_role: str = Role.SCAVENGER, follows: Scenario | None = None,
              shift_s: float = 0.0, shift_at_s: float = 0.0) -> dict[str, Any]:
    """One entry of ``runs``.  ``follows``: the scenario the run followed, ``sc`` with a hold
    of ``shift_s`` at ``shift_at_s`` (``--repeat``; the rows are already retimed to ``sc``'s
    clock, but their counters include what was allocated in the hold)."""
    out: dict[str, Any] = {"scenario": sc.name, "policy": policy, "ok": ok}
    if not rows:
        return {**out, "seconds": 0.0, **dict.fromkeys(FIGURES)}
    first, last = rows[0], rows[-1]
    ts = [r["scenario_elapsed_s"] for r in rows]
    backed = [r["kernel_backed_bytes"] for r in rows]

    def delta(k: str) -> float:
        return last[k] - first[k]

    cpu = delta(f"cpu_{scavenger_role}_s") + delta("release_on_free_cpu_s")
    released = delta("released_bytes")
    hist = [delta(f"alloc_le_{i}") for i in range(len(ALLOC_BUCKETS))] + [delta("alloc_count")]
    span = ts[-1] - ts[0]
    return {
        **out,
        "seconds": round(ts[-1], 3),
        "peak_backed_bytes": int(max(backed)),
        "mean_backed_bytes": int(integral(ts, backed) / span) if span > 0 else int(backed[-1]),
        "end_backed_bytes": int(backed[-1]),
        "excess_byte_seconds": integral(ts, [b - r["live_bytes"]
                                             for b, r in zip(backed, rows, strict=True)]),
        **{name: integral(ts, [r.get(col, 0.0) for r in rows])
           for name, col in zip(SPLIT_FIGURES, SPLIT, strict=True)},
        "free_hold_seconds": hold_seconds(
            integral(ts, [r.get("free_backed_bytes", 0.0) for r in rows]),
            max(backed), last["live_bytes"]),
        "seconds_to_retain_goal": seconds_to_goal(
            ts, backed, [r["retain_goal_bytes"] for r in rows], settle_from(sc)),
        "scavenger_cpu_seconds": round(cpu, 3),
        "released_bytes": int(released),
        "cpu_seconds_per_gib_released": cpu / (released / GIB) if released > 0 else None,
        "madvise_calls": int(delta("madvise_calls")),
        "alloc_latency_p50_seconds": quantile(0.5, hist),
        "alloc_latency_p99_seconds": quantile(0.99, hist),
        "gc_cycles": int(delta("gc_cycles")),
        **alloc_figures(follows or sc, ts[0], ts[-1], delta("allocated_bytes"),
                        shift_s if ts[0] <= shift_at_s <= ts[-1] else 0.0),
        "worker_deaths": int(last["worker_deaths"]),
        "max_books_vs_kernel_error": max(r["books_vs_kernel"] for r in rows),
    }


def hold_seconds(free_byte_seconds: float, peak: float, end_live: float) -> float | None:
    """``free_hold_seconds`` (module doc): free byte-seconds per byte the peak gave up."""
    gave_up = peak - end_live
    return free_byte_seconds / gave_up if gave_up > 0 else None


def alloc_figures(followed: Scenario, t0: float, t1: float, allocated: float,
                  hold_s: float = 0.0) -> dict[str, float | None]:
    """``alloc_bytes_per_s`` (what the mutators allocated over the run, per second) and
    ``alloc_vs_schedule`` (that over what the schedule asked in the same window,
    :meth:`Scenario.asked_bytes`; null for a ``"max"`` phase).  Below 1, the mutators fell
    behind the schedule: the GC saw less garbage than the scenario describes, and ran fewer
    cycles (the Go row allocates at the schedule's pace).  ``hold_s``: the hold (``--repeat``)
    inside the window, in the counters but cut from the rows' clock."""
    span = t1 - t0 + hold_s
    asked = followed.asked_bytes(t0, t1 + hold_s)
    return {"alloc_bytes_per_s": allocated / span if span > 0 else None,
            "alloc_vs_schedule": allocated / asked if asked else None}


SPLIT_FIGURES = ("excess_garbage_byte_seconds", "excess_free_byte_seconds",
                 "excess_fragmentation_byte_seconds")  # of the columns sampler.SPLIT, in order
FIGURES = ("peak_backed_bytes", "mean_backed_bytes", "end_backed_bytes", "excess_byte_seconds",
           *SPLIT_FIGURES,
           "free_hold_seconds", "seconds_to_retain_goal", "scavenger_cpu_seconds",
           "released_bytes",
           "cpu_seconds_per_gib_released", "madvise_calls", "alloc_latency_p50_seconds",
           "alloc_latency_p99_seconds", "gc_cycles", "alloc_bytes_per_s", "alloc_vs_schedule",
           "worker_deaths",
           "max_books_vs_kernel_error")


def finite_or_none(x: Any) -> Any:
    """JSON has no NaN or infinity: such a figure is null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
