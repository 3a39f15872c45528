"""Random allocate / finalize / mark / sweep / free sequences against a plain reference model.

The model knows only sets: which pages are free or scavenged, which objects each span holds,
which have finalizers, which finalizers are queued.  After every step the heap must agree with
it, and :func:`check_heap` must find every invariant intact (allocCount = popcount(allocBits),
free runs coalesced, no page both free and in a span, scavenged bits only on free pages).
"""

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sweeperd.errors import OutOfMemory
from sweeperd.runtime import malloc, mark, mheap, scavenge, specials
from sweeperd.runtime.check import check_heap
from sweeperd.runtime.heap import H_SWEEPGEN, Heap
from sweeperd.runtime.heapstats import heap_stats, scan_heap_stats
from sweeperd.runtime.sizeclasses import CLASS_NPAGES, PAGE_SIZE
from sweeperd.runtime.sweep import sweep, sweep_batch
from sweeperd.runtime.sweepgen import try_claim

NPAGES = 96


class HeapModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.heap = Heap.create(NPAGES * 8192)
        self.free = set(range(NPAGES))
        self.scav = set(range(NPAGES))
        self.spans = {}  # start -> dict(npages, alloc=set, fin=set)
        self.queued = set()
        self.allocated_total = 0
        self.freed_total = 0

    def teardown(self):
        self.heap.close()

    @rule(cls=st.sampled_from([1, 5, 6, 20, 45, 60, 67, 0]), large=st.integers(1, 9))
    def alloc_span(self, cls, large):
        n = large if cls == 0 else int(CLASS_NPAGES[cls])
        try:
            s, nscav = mheap.alloc_span(self.heap, cls, n)
        except OutOfMemory:
            # the model must agree there is no free run of n pages
            assert not any(all(p + i in self.free for i in range(n)) for p in self.free)
            return
        pages = set(range(s, s + n))
        assert pages <= self.free
        assert nscav == len(pages & self.scav)
        self.free -= pages
        self.scav -= pages
        self.spans[s] = {"npages": n, "alloc": set(), "fin": set()}

    @precondition(lambda self: self.spans)
    @rule(data=st.data(), k=st.integers(1, 300))
    def alloc_objects(self, data, k):
        s = data.draw(st.sampled_from(sorted(self.spans)))
        got = malloc.alloc_objects(self.heap, s, k)
        assert not (set(got.tolist()) & self.spans[s]["alloc"])
        self.spans[s]["alloc"] |= set(got.tolist())
        self.allocated_total += got.size
        malloc.write_payload(self.heap, s, got, seed=s)

    @precondition(lambda self: any(v["alloc"] for v in self.spans.values()))
    @rule(data=st.data())
    def set_finalizer(self, data):
        s = data.draw(st.sampled_from(sorted(k for k, v in self.spans.items() if v["alloc"])))
        i = data.draw(st.sampled_from(sorted(self.spans[s]["alloc"])))
        specials.set_finalizer(self.heap, s, i)
        self.spans[s]["fin"].add(i)

    @precondition(lambda self: self.free)
    @rule(data=st.data())
    def scavenge_a_free_page(self, data):
        p = data.draw(st.sampled_from(sorted(self.free)))
        scavenge.finish(self.heap, np.array([p]), np.array([1]))  # as after its release
        self.scav.add(p)

    @rule(data=st.data(), batch=st.booleans(), chunks=st.integers(1, 3))
    def gc_cycle(self, data, batch, chunks):
        live = {}
        for s, v in self.spans.items():
            objs = sorted(v["alloc"])
            keep = data.draw(st.lists(st.sampled_from(objs), unique=True)) if objs else []
            live[s] = set(keep)
            if keep:
                mark.mark_objects(self.heap, np.full(len(keep), s), np.array(keep))
        self.heap.header[H_SWEEPGEN] += 2
        h = self.heap.sweepgen
        claimed = try_claim(self.heap.span_sweepgen, self.heap.in_use_spans(), h)
        assert sorted(claimed.tolist()) == sorted(self.spans)
        if batch:
            for c in np.array_split(claimed, chunks):
                sweep_batch(self.heap, c)
        else:
            for s in claimed:
                sweep(self.heap, int(s))
        for s in list(self.spans):
            v = self.spans[s]
            resurrect = v["fin"] - live[s]
            self.queued |= {(s, i) for i in resurrect}
            v["fin"] -= resurrect
            before = len(v["alloc"])
            v["alloc"] = live[s] | resurrect
            self.freed_total += before - len(v["alloc"])
            if not v["alloc"]:
                self.free |= set(range(s, s + v["npages"]))
                del self.spans[s]

    @rule()
    def run_finalizers(self):
        fs, fi = specials.run_finalizers(self.heap)
        assert set(zip(fs.tolist(), fi.tolist(), strict=True)) == self.queued
        self.queued = set()

    @invariant()
    def heap_matches_model(self):
        hp = self.heap
        check_heap(hp)
        assert set(np.flatnonzero(hp.page_span < 0).tolist()) == self.free
        assert set(np.flatnonzero(hp.scavenged).tolist()) == self.scav
        assert sorted(hp.in_use_spans().tolist()) == sorted(self.spans)
        live_objects = 0
        for s, v in self.spans.items():
            a = int(hp.alloc_buf(s))
            bits = np.unpackbits(hp.bits[a, :, s].copy().view(np.uint8), bitorder="little")
            assert set(np.flatnonzero(bits).tolist()) == v["alloc"]
            fb = np.unpackbits(hp.fin_bits[:, s].copy().view(np.uint8), bitorder="little")
            assert set(np.flatnonzero(fb).tolist()) == v["fin"]
            live_objects += len(v["alloc"])
            idx = np.array(sorted(v["alloc"]), dtype=np.int64)
            assert malloc.verify_payload(hp, s, idx, seed=s).all()
        # conservation: every object ever allocated is live or was freed
        assert self.allocated_total == live_objects + self.freed_total
        # the running counters (the O(1) trigger check) agree with a scan of the span table
        # (every class: objects, in use, spans, occupied pages, scavenged pages)
        assert heap_stats(hp) == scan_heap_stats(hp)
        assert hp.in_use_pages() * PAGE_SIZE == scan_heap_stats(hp).in_use_bytes


HeapModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestHeapModel = HeapModel.TestCase
