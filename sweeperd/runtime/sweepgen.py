"""The sweepgen protocol: who may sweep a span, and when.

Theory of operation
-------------------
The heap's sweepgen ``h`` grows by 2 at the start of every sweep phase.  A span's own
``sweepgen`` relative to ``h`` says where it is (Go's mspan.sweepgen comment):

====== =============================================================
h - 2  needs sweeping
h - 1  being swept, owned by exactly one sweeper
h      swept, ready to use
h + 1  cached by a mutator before the sweep began; still needs sweeping
h + 3  swept and then cached by a mutator
====== =============================================================

A sweeper **claims** a span by moving it h-2 -> h-1 (a compare-and-swap in Go; here a
vectorized test-and-set over a batch, done under the claim lock when several processes race);
the loser of a race simply does not get the span.  Only the claimer may **finish** it (h-1 ->
h), and it does so after the sweep is complete.  A mutator **caches** only swept spans (h ->
h+3); when ``h`` advances by 2 a cached span becomes h+1 on its own, which is how "cached
before the sweep began" is encoded without touching it.  **Uncaching** turns h+3 back into h,
and h+1 into h-1 (owned by the uncacher, who must sweep it).

All values are uint32 and compared modulo 2**32.  Any other relative value is corruption.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from sweeperd.errors import BadSpanState

M32 = 0xFFFFFFFF


class SweepState(IntEnum):
    NEEDS_SWEEP = -2
    SWEEPING = -1
    SWEPT = 0
    CACHED_UNSWEPT = 1
    CACHED_SWEPT = 3


def rel(sg: int, h: int) -> int:
    """``sg - h`` as a small signed number (modulo 2**32)."""
    d = (int(sg) - int(h)) & M32
    return d - (1 << 32) if d & 0x8000_0000 else d


def state_of(sg: int, h: int) -> SweepState:
    d = rel(sg, h)
    try:
        return SweepState(d)
    except ValueError:
        raise BadSpanState(f"span sweepgen {sg} with heap sweepgen {h} (offset {d})") from None


def at(h: int, state: SweepState) -> int:
    """The span sweepgen value that means ``state`` under heap sweepgen ``h``."""
    return (h + int(state)) & M32


def try_claim(span_sweepgen: np.ndarray, spans: np.ndarray, h: int,
              owner: np.ndarray | None = None, me: int = 0) -> np.ndarray:
    """Claim every span of ``spans`` that needs sweeping (h-2 -> h-1); return the claimed.

    The caller holds the heap lock (or is the only process); the test and the set happen in
    one vectorized step per batch, never one message or lock per span.  With ``owner`` (the
    heap's ``span_owner``), the claimer's id ``me`` is recorded first, so that if the claimer
    dies its spans can be told from those of live sweepers.
    """
    spans = np.asarray(spans, dtype=np.int64)
    if spans.size and int(spans[-1]) - int(spans[0]) == spans.size - 1:
        view = span_sweepgen[int(spans[0]) : int(spans[0]) + spans.size]  # a run: no gathers
        ok = view == at(h, SweepState.NEEDS_SWEEP)
        if ok.all():
            if owner is not None:
                owner[int(spans[0]) : int(spans[0]) + spans.size] = me
            view[:] = at(h, SweepState.SWEEPING)
            return spans
    mine = spans[span_sweepgen[spans] == at(h, SweepState.NEEDS_SWEEP)]
    if owner is not None:
        owner[mine] = me
    span_sweepgen[mine] = at(h, SweepState.SWEEPING)
    return mine


def cache(span_sweepgen: np.ndarray, span: int, h: int) -> None:
    """A mutator takes a swept span into its mcache (h -> h+3)."""
    st = state_of(int(span_sweepgen[span]), h)
    if st != SweepState.SWEPT:
        raise BadSpanState(f"cannot cache span {span} in state {st.name}")
    span_sweepgen[span] = at(h, SweepState.CACHED_SWEPT)


def uncache(span_sweepgen: np.ndarray, span: int, h: int) -> bool:
    """A mutator gives a cached span back.  Returns True if the span is stale: cached before
    the current sweep began, now owned by the caller (h-1), who must sweep it."""
    st = state_of(int(span_sweepgen[span]), h)
    if st == SweepState.CACHED_SWEPT:
        span_sweepgen[span] = at(h, SweepState.SWEPT)
        return False
    if st == SweepState.CACHED_UNSWEPT:
        span_sweepgen[span] = at(h, SweepState.SWEEPING)
        return True
    raise BadSpanState(f"cannot uncache span {span} in state {st.name}")
