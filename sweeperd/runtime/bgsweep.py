"""A background sweeper's work for one cycle (Go's bgsweep / sweepone), as plain code.

The worker takes the next chunk of its shard (then steals), claims the chunk's spans, sweeps
them in one batch and releases the chunk, until no unclaimed page is left anywhere.  It keeps
no state another process needs: killed at any point, its claimed-but-unfinished spans sit at
sweepgen h-1 under its claimer id and its last chunk in its shard row, and
``recovery.claims`` finishes them.
"""

from __future__ import annotations

from collections.abc import Callable

from sweeperd.runtime.heap import Heap
from sweeperd.runtime.shards import claim_next, release_chunk
from sweeperd.runtime.sweep import SweepStats, sweep_batch


def sweep_until_done(heap: Heap, me: int, chunk_pages: int = 16384,
                     fault: Callable[[str], None] | None = None) -> SweepStats:
    """Sweep claimer ``me``'s shard, then steal, until no unclaimed pages are left anywhere.
    ``fault`` is the test seam of :func:`~sweeperd.runtime.sweep.sweep_batch`, also called
    once a chunk is claimed ("claimed")."""
    stats = SweepStats()
    while (spans := claim_next(heap, me, chunk_pages)) is not None:
        if fault:
            fault("claimed")
        if spans.size:
            stats.add(sweep_batch(heap, spans, fault=fault))
        release_chunk(heap, me)
    return stats
