"""The claimer-id space: who may hold a span, one definition for the whole heap.

Theory of operation
-------------------
Every span a process claims for sweeping (sweepgen h-1) or caches for allocation (h+1, h+3)
records the claimer in ``span_owner`` (one byte per page), so that when the claimer dies the
coordinator finds exactly what it held and nothing of anyone else's.  Claimers that take
chunks of pages also own one row of the heap's shard table (``heap.shards[owner]``), where the
chunk they are sweeping is recorded for the same reason.

The byte is split into fixed ranges:

=========================== =========================================================
``0 .. MAX_SWEEPERS-1``     sweeper worker ``i`` (also its shard: rows ``0..n-1``)
``MUTATOR_BASE + j``        mutator ``j`` (``j < MAX_MUTATORS``)
``SCAVENGER``               the scavenger (it claims no span; the id names its beat)
``COORDINATOR``             the coordinator itself (spans the shards missed)
``ANONYMOUS``               a caller that did not name itself (tests, benchmarks)
=========================== =========================================================

Invariants (checked at import, so a change that breaks them cannot load): the sweeper and
mutator ranges are disjoint and both fit in the shard table (``MAX_SHARDS`` rows); the
coordinator's and the anonymous id are outside the shard table and fit in a byte.  The config's
limits on ``sweep.sweepers`` and ``mutators.count`` are these constants.
"""

from __future__ import annotations

from sweeperd.roles import Role

MAX_SWEEPERS = 32
MAX_MUTATORS = 32
MUTATOR_BASE = MAX_SWEEPERS
MAX_SHARDS = MUTATOR_BASE + MAX_MUTATORS  # rows of the heap's shard table
SCAVENGER = 253
COORDINATOR = 254
ANONYMOUS = 255
OWNER_BITS = 8  # span_owner is a uint8


def sweeper(i: int) -> int:
    """The claimer id of sweeper worker ``i``."""
    if not 0 <= i < MAX_SWEEPERS:
        raise ValueError(f"sweeper id {i} is outside 0..{MAX_SWEEPERS - 1}")
    return i


def mutator(j: int) -> int:
    """The claimer id of mutator ``j``."""
    if not 0 <= j < MAX_MUTATORS:
        raise ValueError(f"mutator id {j} is outside 0..{MAX_MUTATORS - 1}")
    return MUTATOR_BASE + j


def of(role: Role, wid: int) -> int:
    """The claimer id of worker slot (``role``, ``wid``)."""
    if role is Role.SWEEPER:
        return sweeper(wid)
    if role is Role.MUTATOR:
        return mutator(wid)
    if role is Role.SCAVENGER and wid == 0:
        return SCAVENGER
    raise ValueError(f"no claimer id for {role} {wid}")


def has_shard_row(owner: int) -> bool:
    """Does ``owner`` take chunks of pages (and so own a row of the shard table)?"""
    return 0 <= owner < MAX_SHARDS


def _check() -> None:
    if not (0 < MAX_SWEEPERS <= MUTATOR_BASE and MUTATOR_BASE + MAX_MUTATORS <= MAX_SHARDS):
        raise AssertionError("owners: sweeper and mutator ids overlap or exceed the shards")
    special = (SCAVENGER, COORDINATOR, ANONYMOUS)
    if len(set(special)) != len(special) or any(
            not MAX_SHARDS <= x < 1 << OWNER_BITS for x in special):
        raise AssertionError("owners: special ids must be distinct, past the shards, one byte")


_check()
