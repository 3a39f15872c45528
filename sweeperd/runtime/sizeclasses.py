"""Go's size classes, loaded from the runtime's table (``data/go-size-classes.csv``).

Class 0 is the large-object class: one object that fills a span of as many 8 KiB pages as it
needs.  Classes 1..67 are the small classes: fixed object size, fixed span size, ``nelems``
objects per span.  Every array below is indexed by size class so the hot paths can look
properties up for many spans at once (``CLASS_NELEMS[span_class]``).

``CLASS_NWORDS`` is the number of 64-bit words a span of that class needs for one bitmap
(alloc, mark or finalizer): ``ceil(nelems / 64)``, at most ``MAX_BITMAP_WORDS`` (16, for the
1024 8-byte objects of class 1).
"""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np

PAGE_SHIFT = 13
PAGE_SIZE = 1 << PAGE_SHIFT  # Go's page (the OS page is 4 KiB)
MAX_SMALL_SIZE = 32768
MAX_BITMAP_WORDS = 16


def _load() -> list[dict[str, int]]:
    text = resources.files("sweeperd.runtime").joinpath("data/go-size-classes.csv").read_text()
    rows = []
    for row in csv.DictReader(text.splitlines()):
        rows.append(
            {
                "class": int(row["class"]),
                "size": int(row["bytes_per_obj"]),
                "span_bytes": int(row["bytes_per_span"]),
                "nelems": int(row["objects"]),
            }
        )
    return rows


_ROWS = _load()
NUM_CLASSES = len(_ROWS) + 1  # + class 0
if [r["class"] for r in _ROWS] != list(range(1, NUM_CLASSES)):
    raise RuntimeError("go-size-classes.csv: classes must be numbered 1..N without gaps")

CLASS_SIZE = np.zeros(NUM_CLASSES, dtype=np.int64)
CLASS_NPAGES = np.ones(NUM_CLASSES, dtype=np.int64)
CLASS_NELEMS = np.ones(NUM_CLASSES, dtype=np.int64)
for _r in _ROWS:
    c = _r["class"]
    CLASS_SIZE[c] = _r["size"]
    CLASS_NPAGES[c] = _r["span_bytes"] // PAGE_SIZE
    CLASS_NELEMS[c] = _r["nelems"]
    if _r["span_bytes"] % PAGE_SIZE or _r["nelems"] * _r["size"] > _r["span_bytes"]:
        raise RuntimeError(f"go-size-classes.csv: class {c} is inconsistent")
CLASS_NWORDS = (CLASS_NELEMS + 63) // 64
if CLASS_NWORDS.max() > MAX_BITMAP_WORDS:
    raise RuntimeError("go-size-classes.csv: a class needs more than 1024 objects per span")


def size_to_class(nbytes: int) -> int:
    """The smallest class whose objects hold ``nbytes``; 0 (large) above 32 KiB."""
    if nbytes <= 0:
        raise ValueError(f"object size must be positive, got {nbytes}")
    if nbytes > MAX_SMALL_SIZE:
        return 0
    return int(np.searchsorted(CLASS_SIZE[1:], nbytes, side="left")) + 1


def large_npages(nbytes: int) -> int:
    """Pages of a class-0 span holding one object of ``nbytes``."""
    return max(1, -(-nbytes // PAGE_SIZE))
