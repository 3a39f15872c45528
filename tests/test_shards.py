"""Shards (runtime/shards.py): the vectorized open-for-claim test is the scalar one."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeperd.runtime import shards

from .conftest import start_cycle


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 4), st.lists(st.tuples(st.integers(0, 3), st.integers(1, 700)),
                                   max_size=12), st.booleans())
def test_open_for_claim_many_is_open_for_claim_of_each(heap, nworkers, takes, after):
    """Shards assigned, chunks handed out (some stolen when a range runs dry), then every
    page asked both ways; and with no sweep running (shards cleared) every page is open."""
    start_cycle(heap)
    shards.assign(heap, nworkers)
    for who, pages in takes:
        if shards.claim_next(heap, who % nworkers, pages) is not None:
            shards.release_chunk(heap, who % nworkers)
    if after:
        heap.shards[:] = 0
    pages = np.arange(heap.npages)
    with heap.lock:
        scalar = np.array([shards.open_for_claim(heap, int(p)) for p in pages])
        assert np.array_equal(shards.open_for_claim_many(heap, pages), scalar)
    assert np.array_equal(shards.open_for_claim_many(heap, pages, locked=False), scalar)
    if after:
        assert scalar.all()
