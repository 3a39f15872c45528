"""The claimer-id space: one definition, checked at import, and the config obeys it."""

import pytest

from sweeperd.daemon.config import RANGES
from sweeperd.runtime import owners
from sweeperd.runtime.heap import Heap


def test_ranges_are_disjoint_and_fit_the_shard_table_and_a_byte():
    ids = ([owners.sweeper(i) for i in range(owners.MAX_SWEEPERS)]
           + [owners.mutator(j) for j in range(owners.MAX_MUTATORS)]
           + [owners.COORDINATOR, owners.ANONYMOUS])
    assert len(set(ids)) == len(ids)
    assert all(0 <= x < 256 for x in ids)
    assert all(owners.has_shard_row(x) for x in ids[:-2])
    assert not owners.has_shard_row(owners.COORDINATOR)
    with Heap.create(1 << 20) as heap:
        assert heap.shards.shape[0] == owners.MAX_SHARDS
        assert heap.span_owner.dtype.itemsize * 8 == owners.OWNER_BITS


def test_out_of_range_ids_are_refused_by_name():
    with pytest.raises(ValueError, match="mutator id 32"):
        owners.mutator(owners.MAX_MUTATORS)
    with pytest.raises(ValueError, match="sweeper id -1"):
        owners.sweeper(-1)


def test_config_limits_are_the_id_space():
    assert RANGES["sweep.sweepers"][1] == owners.MAX_SWEEPERS
    assert RANGES["mutators.count"][1] == owners.MAX_MUTATORS
