"""Helpers for the process shells' life cycle."""

from __future__ import annotations

from collections.abc import Iterable
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
