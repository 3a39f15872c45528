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


def run_niced(nice: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    """A worker's entry: lower its scheduling priority by ``nice`` first, then run ``fn``.
    The daemon's own process keeps its priority, so its control plane (status, the scrape)
    is scheduled ahead of workers that run flat out on every core."""
    if nice:
        os.nice(nice)
    fn(*args)
