"""Runs of pages: the numpy idioms the page heap, the scavenger and the checker share.

A *run* is a maximal stretch of consecutive True values in a per-page mask (free pages,
pages to release), given as parallel ``starts`` and ``lengths`` arrays.  Spans are runs too:
a span's start page and its page count.  Everything here is pure and vectorized; nothing
reads the heap.
"""

from __future__ import annotations

import numpy as np


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the runs of True in the 1-D ``mask``, ascending."""
    m = np.concatenate(([False], mask, [False])).view(np.int8)
    d = np.diff(m)
    starts = np.flatnonzero(d == 1)
    return starts, np.flatnonzero(d == -1) - starts


def consecutive(pages: np.ndarray) -> tuple[list[int], list[int]]:
    """(starts, lengths) of the runs of consecutive numbers in ascending ``pages``."""
    pages = np.asarray(pages, dtype=np.int64)
    if pages.size == 0:
        return [], []
    assert (np.diff(pages) > 0).all(), "consecutive: pages must ascend"
    cut = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = pages[np.concatenate(([0], cut))]
    return starts.tolist(), np.diff(np.concatenate(([0], cut, [pages.size]))).tolist()


def first_run(mask: np.ndarray, n: int) -> int:
    """Index of the first run of at least ``n`` consecutive True values, or -1."""
    if n == 1:
        i = int(np.argmax(mask)) if mask.size else 0
        return i if mask.size and mask[i] else -1
    starts, lengths = runs(mask)
    ok = np.flatnonzero(lengths >= n)
    return int(starts[ok[0]]) if ok.size else -1


def run_pages(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every page of the runs ``[starts[i], starts[i] + lengths[i])``, in run order."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if starts.size == 0:
        return starts
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
        int(lengths.sum()))
