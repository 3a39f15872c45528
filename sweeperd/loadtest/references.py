"""The reference programs behind one small interface: the real thing a lab row is held against.

Theory of operation
-------------------
A *reference* is a real runtime or allocator running the same scenario as the daemon's
mutators, outside the daemon: the Go program in the real Go runtime (``go-runtime``,
:mod:`sweeperd.loadtest.goref`) and the C program in a real ``malloc`` (``c-glibc``,
``c-jemalloc``, ``c-tcmalloc``, ``c-mimalloc``, :mod:`sweeperd.loadtest.cref`).  Each
builds its program on first use (cached), runs one scenario with a run's settings as the
runtime's or allocator's own knobs, and yields rows with the daemon runs' columns, so the
summary, the fidelity analysis and the report treat its rows as any other run's.  The load
test asks :func:`for_policy`; ``None`` means the daemon runs the policy.

Invariants: every reference policy name is here and nowhere else decides which program runs
it; ``not_measured`` names the summary figures the reference cannot know (null in its row,
never 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sweeperd.loadtest import cref, goref
from sweeperd.loadtest.runner import RunResult
from sweeperd.workload.scenario import Scenario

OnSample = Callable[[float], None] | None
RunFn = Callable[[Scenario, Path, float, OnSample, Mapping[str, object]], RunResult]


@dataclass(frozen=True)
class Reference:
    policy: str  # the row's policy name
    what: str  # for people: "the real Go runtime", "jemalloc's malloc"
    run: RunFn  # (scenario, run dir, sample period s, on_sample, settings) -> rows
    not_measured: tuple[str, ...]  # summary figures it cannot know: null in its row


def _go(sc: Scenario, rundir: Path, sample_s: float, on_sample: OnSample,
        settings: Mapping[str, object]) -> RunResult:
    return goref.run(sc, rundir, sample_s, on_sample, settings)


def _c(policy: str) -> RunFn:
    def run(sc: Scenario, rundir: Path, sample_s: float, on_sample: OnSample,
            settings: Mapping[str, object]) -> RunResult:
        return cref.run(policy, sc, rundir, sample_s, on_sample, settings)
    return run


REFERENCES: dict[str, Reference] = {
    goref.POLICY: Reference(goref.POLICY, "the real Go runtime", _go, goref.NOT_MEASURED),
    **{a.policy: Reference(a.policy, f"{a.name}'s malloc", _c(a.policy), cref.NOT_MEASURED)
       for a in cref.ALLOCATORS.values()},
}


def for_policy(policy: str) -> Reference | None:
    """The reference that runs ``policy``, or None (the daemon runs it)."""
    return REFERENCES.get(policy)
