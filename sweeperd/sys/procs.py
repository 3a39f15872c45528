"""Helpers for the process shells' life cycle."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any


def reap(procs: Iterable[Any], timeout: float = 30.0) -> None:
    """Join every started process; kill and join one that does not exit within ``timeout``."""
    for p in procs:
        if p.pid is None:
            continue  # never started
        p.join(timeout=timeout)
        if p.is_alive():
            p.kill()
            p.join()


WORKER_OOM_SCORE_ADJ = 500  # the OOM killer takes a replaceable worker before the coordinator


def run_niced(nice: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    """A worker's entry: lower its scheduling priority by ``nice`` first, then run ``fn``.
    The daemon's own process keeps its priority, so its control plane (status, the scrape)
    is scheduled ahead of workers that run flat out on every core.  Likewise the worker
    raises its ``oom_score_adj`` (no privilege needed to raise it): when memory runs out, the
    kernel's OOM killer takes a worker — recovered, replaced, and counted as a memory death
    — rather than the coordinator, whose death would lose the heap and every worker."""
    if nice:
        os.nice(nice)
    raise_oom_score_adj(WORKER_OOM_SCORE_ADJ)
    fn(*args)


def raise_oom_score_adj(adj: int, proc: str = "/proc/self") -> None:
    """Raise this process's ``oom_score_adj`` to ``adj`` (never lower it; a kernel without the
    file, or refusing, is left as it is)."""
    try:
        with open(f"{proc}/oom_score_adj", "r+") as f:
            if int(f.read().strip() or 0) < adj:
                f.seek(0)
                f.write(str(adj))
    except (OSError, ValueError):
        pass
