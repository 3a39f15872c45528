"""The mutator's workload model, in-process: bulk and single allocation, mark, verification."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.runtime import shards
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heapstats import marked_bytes
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.runtime.sweepgen import try_claim
from sweeperd.workload.mutator import Chunk, Mutator, Workload

from .conftest import start_cycle

MIB = 1 << 20


def _cycle(heap, m, now=None):
    m.flush()
    m.mark(heap.sweepgen + 2, now)
    # what it reports marking is what the mark bits say (the coordinator's live heap)
    assert m.stats.marked_bytes == marked_bytes(heap)
    start_cycle(heap)
    shards.assign(heap, 1)
    return sweep_batch(heap, try_claim(heap.span_sweepgen, heap.in_use_spans(),
                                       heap.sweepgen))


def test_objects_live_their_lifetime_and_are_freed_after(heap):
    cfg = Workload(size_classes=(6, 20, 45), mean_lifetime_cycles=2,
                        finalizer_fraction=0.01, large_fraction=0.002)
    m = Mutator(heap, 0, cfg, debug=True, rng=np.random.default_rng(3))
    allocated = freed = 0
    for _ in range(6):
        for _ in range(20):
            allocated += m.step()
        st = _cycle(heap, m)
        freed += st.objects_freed + m.stats.objects_freed
        m.stats.objects_freed = 0
        check_heap(heap)
    assert m.stats.objects_checked > 0
    assert m.stats.lost_objects == 0 and m.stats.payload_errors == 0
    live_in_heap = int(heap.span_alloc_count[heap.in_use_spans()].sum())
    assert allocated == live_in_heap + freed  # conservation
    assert m.stats.live_objects <= live_in_heap  # + finalizer-resurrected ones


def test_verification_catches_a_lost_object(heap):
    m = Mutator(heap, 0, Workload(size_classes=(6,), mean_lifetime_cycles=100,
                                       finalizer_fraction=0, large_fraction=0),
                debug=True, rng=np.random.default_rng(1))
    m.step()
    ch = m.live[0]
    heap.arena64[int(ch.span[0]) * 1024] ^= np.uint64(1)  # one flipped bit in object 0
    m.flush()
    m.mark(heap.sweepgen + 2)
    assert m.stats.payload_errors == 1


@given(st.lists(st.tuples(st.integers(0, (1 << 21) - 1), st.integers(0, 1023),
                          st.integers(0, 50)), max_size=300),
       st.lists(st.integers(0, 60), max_size=6))
def test_a_chunk_keeps_exactly_the_objects_not_yet_dead(objs, marks):
    """Sorted by death, a mark drops a prefix: the survivors are exactly the objects whose
    death is above the mark, with their span and slot intact, at every mark in turn."""
    spans = np.array([o[0] for o in objs], dtype=np.int64)
    idx = np.array([o[1] for o in objs], dtype=np.int64)
    death = np.array([o[2] for o in objs], dtype=np.int32)
    ch: Chunk | None = Chunk.of(spans, idx, 7, death)
    for m in sorted(marks):
        ch = ch.survivors(m) if ch is not None else None
        want = sorted((s, i) for s, i, d in objs if d > m)
        got = [] if ch is None else sorted(zip(ch.span.tolist(), ch.idx.tolist(), strict=True))
        assert got == want
        if ch is not None:
            assert ch.ids.size and ch.seed == 7


def test_a_chunk_lets_the_memory_of_its_dead_go():
    n = 100_000
    ch = Chunk.of(np.zeros(n, np.int64), np.zeros(n, np.int64), 1, np.arange(n, dtype=np.int32))
    later = ch.survivors(n - 10)
    assert later is not None and later.ids.size == 9
    assert later.ids.base is None or later.ids.base.size < n  # not a view of the whole


# --- following a scenario's schedule ----------------------------------------------------------

SCHED = """
[scenario]
name = "t"
heap_mib = 64

[[phase]]
name = "hold"
seconds = 10
live_mib = 4
garbage_mib_s = 2

[[phase]]
name = "drop"
seconds = 10
live_mib = 1
garbage_mib_s = 0
"""


def _scheduled(heap, text=SCHED, debug=True, seed=5):
    from sweeperd.workload.scenario import Schedule, parse

    m = Mutator(heap, 0, Workload(), debug=debug, rng=np.random.default_rng(seed))
    m.schedule, m.t0 = Schedule(parse(text)), 100.0
    return m


def _run_until(m, t_from, t_to, dt=0.01):
    t = t_from
    while t < t_to:
        m.step_scheduled(t)
        t += dt
    return t


def test_a_scheduled_mutator_holds_the_target_and_drops_the_oldest_when_it_falls(heap):
    m = _scheduled(heap)
    t = _run_until(m, 100.0, 101.0)
    assert 4 * MIB <= m.kept_bytes <= 4 * MIB + 600 * 1024  # up to one bulk batch over
    garbage = m.stats.bytes_allocated - m.kept_bytes
    assert 1.5 * MIB <= garbage <= 3.5 * MIB  # ~2 MiB/s for 1 s (plus the first second owed)
    _cycle(heap, m, t)
    assert m.stats.marked_bytes == m.kept_bytes  # the garbage died at the first mark
    oldest = m.live[0].seed
    m.flush()
    m.mark(heap.sweepgen + 2, now=100.0 + 10.5)  # in "drop": 1 MiB
    assert m.kept_bytes <= 1 * MIB
    assert m.stats.marked_bytes == m.kept_bytes and m.stats.lost_objects == 0
    assert all(ch.seed != oldest for ch in m.live)  # the oldest went first
    _run_until(m, 110.5, 111.0)  # tops up what dropping whole chunks took below the target
    assert 1 * MIB <= m.kept_bytes <= 1 * MIB + 64 * 1024
    assert m.step_scheduled(111.1) == 0  # at its target, no garbage due: nothing to do


def test_pinned_objects_survive_every_drop(heap):
    text = SCHED.replace('name = "hold"', 'name = "hold"\nlong_lived_every = 10')
    m = _scheduled(heap, text)
    t = _run_until(m, 100.0, 100.5)
    pinned = m.kept_bytes - sum(ch.keep_bytes for ch in m.live)
    assert pinned > 0
    _cycle(heap, m, t)
    m.flush()
    m.mark(heap.sweepgen + 2, now=100.0 + 10.5)
    m.mark(heap.sweepgen + 2, now=100.0 + 10.6)
    kept_chunks = sum(ch.keep_bytes for ch in m.live)
    assert m.kept_bytes - kept_chunks == pinned  # every pinned object is still held
    assert m.stats.lost_objects == 0 and m.stats.payload_errors == 0


def test_refills_are_timed_into_the_histogram(heap):
    from sweeperd.workload.mutator import ALLOC_BUCKETS

    m = Mutator(heap, 0, Workload(size_classes=(2, 6)), rng=np.random.default_rng(2))
    for _ in range(50):
        m.step()
    s = m.stats
    assert s.refills > 0 and sum(s.refill_buckets) == s.refills
    assert len(s.refill_buckets) == len(ALLOC_BUCKETS) + 1
    d = s.as_dict()
    assert d["refills"] == s.refills and d["refill_le_0"] == s.refill_buckets[0]
    from sweeperd.wire import protocol
    from workers.mutator import _wire

    wire = _wire(m)  # what its heartbeat carries: within the protocol's bounds
    assert wire.refills == s.refills and list(wire.refill_buckets) == s.refill_buckets
    assert protocol.decode(protocol.encode(protocol.HeartbeatMsg(stats=wire))).stats == wire


def _twin_run(text: str, whole: bool, steps: int, cycles: int, seed: int):
    from sweeperd.runtime.heap import Heap
    from sweeperd.workload.scenario import Schedule, parse

    h = Heap.create(32 << 20)
    m = Mutator(h, 0, Workload(), debug=True, rng=np.random.default_rng(seed))
    m.schedule, m.t0, m.whole_spans = Schedule(parse(text)), 100.0, whole
    t = 100.0
    for _ in range(cycles):
        for _ in range(steps):
            m.step_scheduled(t)
            t += 0.01
        _cycle(h, m, t)
        check_heap(h)
    return h, m


@settings(max_examples=12, deadline=None)
@given(live=st.integers(1, 4), garbage=st.integers(1, 24), every=st.sampled_from([0, 1, 7, 300]),
       fin=st.sampled_from([0.0, 0.002]), classes=st.lists(
           st.sampled_from([1, 2, 6, 20, 45, 60]), min_size=1, max_size=3, unique=True),
       steps=st.integers(1, 20), cycles=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_whole_span_records_give_the_same_heap_as_object_records(live, garbage, every, fin,
                                                                classes, steps, cycles, seed):
    """The whole-span path (payload by page runs, one record per batch, marked span by span,
    garbage not recorded) against the object-by-object reference on the same schedule and
    the same random draws: the same allocations, bitmaps, books and live set, all checked."""
    text = f"""
[scenario]
name = "twin"
heap_mib = 32

[[phase]]
name = "p"
seconds = 100
live_mib = {live}
garbage_mib_s = {garbage}
long_lived_every = {every}
finalizer_fraction = {fin}
size_classes = {classes}
"""
    a, ma = _twin_run(text, True, steps, cycles, seed)
    b, mb = _twin_run(text, False, steps, cycles, seed)
    try:
        for name in ("bits", "span_state", "span_class", "span_alloc_count", "span_freeindex",
                     "span_sweepgen", "span_npages", "counters", "tallies"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        for m in (ma, mb):
            assert m.stats.lost_objects == 0 and m.stats.payload_errors == 0
        for k in ("bytes_allocated", "marked_bytes", "live_objects", "finalizers_set",
                  "objects_freed"):
            assert getattr(ma.stats, k) == getattr(mb.stats, k), k
        assert ma.kept_bytes == mb.kept_bytes
    finally:
        del ma, mb
        a.close()
        b.close()


def test_the_mark_plan_is_kept_while_the_live_chunks_are_the_same(heap):
    """Small-path kept objects (chunks of objects): the plan of their mark is built once and
    applied at every mark while no chunk is added, cut or dropped; a drop rebuilds it, and
    each mark sets what the chunks' objects need (the cycle checks the marked bytes)."""
    m = _scheduled(heap, SCHED.replace("garbage_mib_s = 2", "garbage_mib_s = 0", 1)
                   .replace("live_mib = 1", "live_mib = 0"))
    t = _run_until(m, 100.0, 100.3)
    _cycle(heap, m, t)
    first = m._plan
    assert first is not None and first.nbytes > 0
    _cycle(heap, m, t + 0.01)  # nothing allocated since: the same chunks, the same plan
    assert m._plan is first
    m.flush()
    m.mark(heap.sweepgen + 2, now=100.0 + 10.5)  # the target falls to 0: all dropped
    assert m._plan is not first and m._plan.nbytes == 0
    assert m.stats.marked_bytes == m.kept_bytes == 0
