from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

from sweeperd.runtime.heap import H_SWEEPGEN, Heap
from sweeperd.runtime.sweepgen import try_claim

# No test asserts on time: hypothesis's per-example deadline (200 ms by default) is a timer
# that a loaded CI host races, and the first example of a test pays any lazy import
# (scipy.stats: over a second).  Off for every test; a test's own @settings keep the rest.
settings.register_profile("sweeperd", deadline=None)
settings.load_profile("sweeperd")


@pytest.fixture
def heap():
    h = Heap.create(16 << 20)  # 2048 pages
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def daemon():
    """A real daemon with 2 sweepers, 2 mutators and debug checks; always torn down."""
    from .daemon import Daemon

    d = Daemon("--heap-mib", "64", "--sweepers", "2", "--mutators", "2", "--debug-checks")
    try:
        yield d
    finally:
        d.close()


def start_cycle(heap: Heap) -> int:
    """Begin a sweep phase (sweepgen += 2), as the coordinator does after mark."""
    heap.header[H_SWEEPGEN] += 2
    return heap.sweepgen


def claim_all(heap: Heap) -> np.ndarray:
    return try_claim(heap.span_sweepgen, heap.in_use_spans(), heap.sweepgen)


def not_here(msg: str) -> None:
    """A test that cannot run on this machine: in CI (where ``.ci/run`` installed all it
    needs) that is a failure; elsewhere a loud skip."""
    if os.environ.get("CI"):
        pytest.fail(f"NOT RUN in CI: {msg}")
    pytest.skip(f"NOT RUN: {msg}")
