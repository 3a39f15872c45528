"""mcentral's span sets, as one byte per span: which set a span is in, by sweepgen parity.

Go keeps, per span class, ``partial[2]`` and ``full[2]`` span sets; which element of a pair
holds *swept* spans flips every cycle with the parity of ``sweepgen / 2``, so advancing the
heap's sweepgen by 2 turns every swept set into an unswept one without touching a span.

Here membership is ``span_set[start page]``: ``SET_NONE`` (0) for none (free, cached by a
mutator, or held by a sweeper), 1/2 for ``partial[0]``/``partial[1]``, 3/4 for
``full[0]``/``full[1]``; the class is the span's own.  A span is in at most one set.  These
functions name the set ids for heap sweepgen ``h``; the sets' operations are in mcentral.py.
"""

from __future__ import annotations

SET_NONE = 0


def partial_swept(h: int) -> int:
    return 1 + ((h >> 1) & 1)


def partial_unswept(h: int) -> int:
    return 1 + (((h >> 1) + 1) & 1)


def full_swept(h: int) -> int:
    return 3 + ((h >> 1) & 1)


def full_unswept(h: int) -> int:
    return 3 + (((h >> 1) + 1) & 1)
