"""The compiled loops' guard rails: what reaches C is checked first (dtype, contiguity,
sizes), and spans out of the heap are handed back, never indexed.  (Their results are held
to the numpy engines in test_sweep_equivalence.py and test_mheap.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sweeperd.runtime import kernels, mheap
from sweeperd.runtime.heap import SPAN_IN_USE, Heap

from .conftest import not_here


@pytest.fixture
def heap():
    if not kernels.enabled():
        not_here(f"no compiled kernels: {kernels.unavailable()}")
    with Heap.create(1 << 20) as h:
        yield h


TABLES = ["tallies", "span_state", "span_sweepgen", "span_commit", "span_specials", "span_class",
          "span_npages", "span_nelems", "span_alloc_count", "span_freeindex", "span_set",
          "page_span", "scavenged", "bits"]


def _like(heap: Heap, **over) -> SimpleNamespace:
    return SimpleNamespace(**({k: getattr(heap, k) for k in TABLES} | over))


def _check(heap: Heap, spans: np.ndarray, out_len: int = 7) -> bool:
    return kernels.sweep_check(kernels.tables(heap), spans, heap.sweepgen,
                               np.zeros(max(spans.size, 1), np.int64), np.zeros(out_len, np.int64))


def test_wrong_dtypes_and_short_arrays_never_reach_c(heap):
    spans = np.array([0], dtype=np.int64)
    with pytest.raises(TypeError, match="where C reads int64"):
        _check(heap, spans.astype(np.int32))
    with pytest.raises(TypeError, match="contiguous False"):
        _check(heap, np.array([0, 1, 2, 3], dtype=np.int64)[::2])
    with pytest.raises(ValueError, match="where 7 are indexed"):
        _check(heap, spans, out_len=6)
    with pytest.raises(TypeError, match="where C reads uint16"):
        kernels.Tables(_like(heap, span_alloc_count=heap.span_alloc_count.astype(np.int64)))
    with pytest.raises(ValueError, match="span_set has"):
        kernels.Tables(_like(heap, span_set=heap.span_set[:-1]))
    with pytest.raises(ValueError, match="bits of shape"):
        kernels.Tables(_like(heap, bits=heap.bits[:, :, :-1]))
    assert kernels.Tables(_like(heap)).npages == heap.npages


def test_a_closed_heap_drops_its_addresses():
    if not kernels.enabled():
        not_here(f"no compiled kernels: {kernels.unavailable()}")
    h = Heap.create(1 << 20)
    assert kernels.tables(h) is kernels.tables(h)
    h.close()
    assert h.kernel_tables is None


@pytest.mark.parametrize("bad", [-1, -(2**40), 1 << 40])
def test_spans_outside_the_heap_are_handed_back_untouched(heap, bad):
    before = heap.snapshot()
    assert not _check(heap, np.array([bad], dtype=np.int64))
    n, out = np.zeros(1, np.int64), np.zeros(2, np.int64)
    assert not kernels.free_spans_plain(kernels.tables(heap), np.array([bad], dtype=np.int64),
                                        n, out, heap.me)
    after = heap.snapshot()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_span_whose_pages_are_not_its_own_is_handed_back(heap):
    s, _ = mheap.alloc_span(heap, 0, 3)
    heap.page_span[s + 2] = s + 1  # corrupt: the numpy engine names it ("another span")
    n, out = np.zeros(1, np.int64), np.zeros(2, np.int64)
    assert not kernels.free_spans_plain(kernels.tables(heap), np.array([s], dtype=np.int64),
                                        n, out, heap.me)
    assert heap.span_state[s] == SPAN_IN_USE


@pytest.mark.parametrize("value", ["0", "off", "False", " no "])
def test_the_numpy_engine_is_chosen_by_name_and_nothing_is_built_at_import(value):
    """``SWEEPERD_KERNELS`` off in any of its spellings chooses numpy, and says so; importing
    the runtime builds nothing (``sweeperd status`` never runs a compiler)."""
    import os
    import subprocess
    import sys

    code = ("from sweeperd.runtime import kernels, sweep\n"
            "assert not kernels._loaded\n"
            "print(kernels.engine())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "SWEEPERD_KERNELS": value})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"numpy (no compiled kernels: SWEEPERD_KERNELS={value})"
