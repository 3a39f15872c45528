"""The scavenger core on a real heap with real MADV_REMOVE, checked against the kernel."""

import errno

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sweeperd.bench.common import fill_heap
from sweeperd.runtime import malloc, mheap, owners, recovery, scavenge
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import PAGE_FREE, Heap, scavenging
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys.sysmem import Kernel, SysMem

from .conftest import claim_all, start_cycle


class RecordingKernel(Kernel):
    """The real kernel, with every released range written down."""

    def __init__(self):
        super().__init__()
        self.released = []

    def madvise(self, addr, length, advice):
        self.released.append((addr, length))
        super().madvise(addr, length, advice)


def _sysmem(heap, kernel=None):
    return SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True,
                  kernel=kernel or Kernel())


def _sweep_all_dead(heap):
    from sweeperd.runtime.sweep import sweep_batch

    start_cycle(heap)
    sweep_batch(heap, claim_all(heap))


def test_release_drops_the_kernels_blocks_by_exactly_what_it_says():
    with Heap.create(32 << 20) as heap:
        spans = fill_heap(heap, 6, heap.npages)
        keep = spans[:100]
        from sweeperd.runtime.mark import mark_spans_fully

        mark_spans_fully(heap, keep)
        _sweep_all_dead(heap)
        before = heap.arena_backed_bytes()
        rk = RecordingKernel()
        r = scavenge.scavenge(heap, _sysmem(heap, rk), heap.npages)
        assert r.pages == heap.npages - 100 and r.runs == 1  # one contiguous run, one call
        assert before - heap.arena_backed_bytes() == r.bytes  # the kernel agrees exactly
        assert len(rk.released) == 1
        assert not heap.arena[100 * PAGE_SIZE :].any()  # released pages read as zero
        assert (heap.arena[: 100 * PAGE_SIZE] == 0xA5).all()  # live pages untouched
        assert heap.scavenged[100:].all() and not heap.scavenged[:100].any()
        check_heap(heap)
        # nothing left to release: a second pass does nothing
        assert scavenge.scavenge(heap, _sysmem(heap), heap.npages).pages == 0


def test_highest_addresses_first_and_runs_batched():
    with Heap.create(8 << 20) as heap:
        spans, _ = mheap.alloc_spans(heap, 6, 64)
        heap.arena[: 64 * PAGE_SIZE] = 1
        mheap.free_spans(heap, spans[[3, 4, 5, 10, 11, 40]])
        heap.scavenged[64:] = 1  # as if the fresh heap above were never touched
        starts, lengths = scavenge.candidates(heap, 4)
        assert starts.tolist() == [40, 10, 5] and lengths.tolist() == [1, 2, 1]  # 5: top of 3..5
        r = scavenge.scavenge(heap, _sysmem(heap), 100)
        assert r.pages == 6 and r.runs == 3
        check_heap(heap)


def test_pages_being_released_are_out_of_the_allocators_reach():
    with Heap.create(1 << 20) as heap:  # 128 pages
        s, _ = mheap.alloc_span(heap, 0, 128)
        heap.arena[:] = 1
        mheap.free_spans(heap, np.array([s]))
        starts, lengths = scavenge.take(heap, 128)  # released right now, by "another process"
        assert (heap.page_span == scavenging(heap.me)).all()
        assert mheap.find_run(heap, 1) == -1
        scavenge.finish(heap, starts, lengths)
        got, nscav = mheap.alloc_span(heap, 6)
        assert got == 0 and nscav == 1  # a reused page was released: it goes through sysUsed


def test_a_dead_scavengers_half_release_is_recovered():
    with Heap.create(2 << 20) as heap:
        spans, _ = mheap.alloc_spans(heap, 6, heap.npages)
        heap.arena[:] = 3
        mheap.free_spans(heap, spans)
        heap.me = owners.SCAVENGER
        scavenge.take(heap, heap.npages)  # ... and the scavenger is killed before madvise
        r = recovery.released_runs(heap, _sysmem(heap))
        assert r.pages == heap.npages and heap.arena_backed_bytes() == 0
        assert (heap.page_span == PAGE_FREE).all() and heap.scavenged.all()
        check_heap(heap)


def test_recovery_finishes_only_the_dead_releasers_pages():
    """Under the eager policy a sweeper releases what it frees, while the scavenger may be
    releasing too: the recovery of one must leave the other's taken pages alone (finishing
    them early would let an allocator take pages about to be advised away)."""
    with Heap.create(2 << 20) as heap:  # 256 pages
        spans, _ = mheap.alloc_spans(heap, 6, heap.npages)
        heap.arena[:] = 3
        mheap.free_spans(heap, spans)
        heap.me = owners.SCAVENGER
        scavenge.take(heap, 100)  # the top 100 pages
        heap.me = owners.sweeper(1)
        mine = scavenge.take_runs(heap, np.array([0]), np.array([50]))
        assert mine[0].tolist() == [0] and mine[1].tolist() == [50]
        r = recovery.released_runs(heap, _sysmem(heap), owners.sweeper(1))
        assert r.pages == 50 and heap.scavenged[:50].all() and not heap.scavenged[50:].any()
        assert (heap.page_span[156:] == scavenging(owners.SCAVENGER)).all()  # untouched
        assert (heap.page_span[:156] == PAGE_FREE).all()
        check_heap(heap)


def test_reported_bytes_are_the_kernels_even_for_never_touched_free_pages():
    with Heap.create(8 << 20) as heap:  # 1024 pages
        a, _ = mheap.alloc_span(heap, 0, 64)  # a large span: only its first page is kept
        b, _ = mheap.alloc_span(heap, 0, 64)  # written whole
        # allocation committed both whole (mheap.commit); the kernel drops a's other pages
        _sysmem(heap).sys_unused(a * PAGE_SIZE + 4096, 64 * PAGE_SIZE - 4096)
        heap.arena[a * PAGE_SIZE : a * PAGE_SIZE + 4096] = 7
        heap.arena[b * PAGE_SIZE : (b + 64) * PAGE_SIZE] = 9
        mheap.free_spans(heap, np.array([a, b]))
        before = heap.arena_backed_bytes()
        assert before == 4096 + 64 * PAGE_SIZE
        r = scavenge.scavenge(heap, _sysmem(heap), heap.npages)
        assert r.pages == 128  # the books: every free page that was not scavenged
        assert r.kernel_bytes == before - heap.arena_backed_bytes() == before
        assert not heap.arena[: 128 * PAGE_SIZE].any()


class ScavengeModel(RuleBasedStateMachine):
    """No allocated page is ever released, no page twice without reuse, scavenged bits exact,
    and a released run never crosses an allocated page."""

    def __init__(self):
        super().__init__()
        self.heap = Heap.create(64 * PAGE_SIZE)
        self.rk = RecordingKernel()
        self.sm = _sysmem(self.heap, self.rk)
        self.base = self.heap.arena.ctypes.data
        self.spans = {}
        self.scav = set(range(64))  # fresh heap: scavenged

    def teardown(self):
        self.heap.close()

    @rule(n=st.integers(1, 6))
    def alloc(self, n):
        try:
            s, nscav = mheap.alloc_span(self.heap, 0, n)
        except Exception:
            return
        pages = set(range(s, s + n))
        assert nscav == len(pages & self.scav)
        self.scav -= pages
        self.spans[s] = n
        idx = malloc.alloc_objects(self.heap, s, 1)
        malloc.write_payload(self.heap, s, idx, seed=s)

    @precondition(lambda self: self.spans)
    @rule(data=st.data())
    def free(self, data):
        s = data.draw(st.sampled_from(sorted(self.spans)))
        self.heap.bits[:, :, s] = 0  # its object died and was swept (what sweep leaves)
        self.heap.span_alloc_count[s] = 0
        mheap.free_spans(self.heap, np.array([s]))
        del self.spans[s]

    @rule(k=st.integers(1, 70))
    def scavenge_some(self, k):
        in_use = {p for s, n in self.spans.items() for p in range(s, s + n)}
        self.rk.released.clear()
        r = scavenge.scavenge(self.heap, self.sm, k)
        got = set()
        for addr, length in self.rk.released:
            first = (addr - self.base) // PAGE_SIZE
            run = set(range(first, first + length // PAGE_SIZE))
            assert not run & in_use, "released an allocated page"
            assert not run & self.scav, "released a page twice without reuse"
            got |= run
        assert len(got) == r.pages <= k
        self.scav |= got
        for p in got:  # the highest candidates were taken
            assert all(q in self.scav or q in in_use for q in range(p, 64))

    @invariant()
    def bits_exact(self):
        assert set(np.flatnonzero(self.heap.scavenged).tolist()) == self.scav
        for s in self.spans:
            assert malloc.verify_payload(self.heap, s, np.array([0]), seed=s).all()
        check_heap(self.heap)


ScavengeModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                           deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
TestScavengeModel = ScavengeModel.TestCase


def test_runs_across_search_windows_are_one_call(monkeypatch):
    monkeypatch.setattr(scavenge, "WINDOW", 16)
    with Heap.create(1 << 20) as heap:  # 128 pages
        s, _ = mheap.alloc_span(heap, 0, 100)
        t, _ = mheap.alloc_span(heap, 0, 28)
        heap.arena[:] = 1
        mheap.free_spans(heap, np.array([s]))
        starts, lengths = scavenge.candidates(heap, 1000)
        assert starts.tolist() == [0] and lengths.tolist() == [100]  # 7 windows, one run
        starts, lengths = scavenge.candidates(heap, 30)
        assert starts.tolist() == [70] and lengths.tolist() == [30]  # its top 30 pages
        r = scavenge.scavenge(heap, _sysmem(heap), 1000)
        assert r.runs == 1 and r.pages == 100
        assert heap.arena_backed_bytes() == 28 * PAGE_SIZE
        mheap.free_spans(heap, np.array([t]))  # freeing above raises the search again
        assert scavenge.scavenge(heap, _sysmem(heap), 1000).pages == 28


class FailingKernel(Kernel):
    def madvise(self, addr, length, advice):
        raise OSError(errno.EAGAIN, "try again")


def test_a_failed_release_gives_its_pages_back_to_the_allocator_and_the_search(monkeypatch):
    monkeypatch.setattr(scavenge, "WINDOW", 256)  # the search walks down several windows
    with Heap.create(16 << 20) as heap:
        fill_heap(heap, 6, heap.npages)
        _sweep_all_dead(heap)
        with pytest.raises(OSError):
            scavenge.scavenge(heap, _sysmem(heap, FailingKernel()), 300)
        assert (heap.page_span == PAGE_FREE).all() and not heap.scavenged.any()
        starts, lengths = scavenge.candidates(heap, 300)  # still visible to the scavenger
        assert int(lengths.sum()) == 300 and int(starts[0] + lengths[0]) == heap.npages
        r = scavenge.scavenge(heap, _sysmem(heap), heap.npages)
        assert r.pages == heap.npages
        check_heap(heap)
