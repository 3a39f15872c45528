"""The mutator workload model: what a mutator allocates, how long it lives, and marking it.

Allocation goes mcache -> mcentral as in Go: a cached span per size class; when it is full,
``mcentral.cache_span`` gives another (partial-swept first, then on-demand sweeping of unswept
spans, then heap growth).  Every object's payload is written into the arena.  After each
allocation the mutator pays its **proportional sweep** debt (pages per byte set by the
coordinator at sweep start) by claiming and sweeping chunks itself.

Liveness is the workload's.  Without a scenario each object lives a geometric number of GC
cycles at a fixed rate.  With one (:mod:`sweeperd.workload.scenario`), the mutator follows its
share of the schedule: it allocates *kept* objects until it holds the live heap the schedule
asks for, and *garbage* (dead at the next mark) at the schedule's rate; when the target falls,
its next mark drops the oldest kept objects (whole chunks) until it holds the target again.
Pinned objects (``long_lived_every``) live for the rest of the run.  At ``mark`` the mutator
flushes its mcache, marks its live objects, and (debug mode) checks that each one is still
allocated and its payload intact — no object lost, no byte changed.

Each refill (an mcache miss: ``mcentral.cache_span``, on-demand sweeping included, plus the
proportional sweep it pays) is timed into ``refill_buckets`` (``ALLOC_BUCKETS``): the
mutator's view of sweep pressure, exported as ``sweeperd_mutator_alloc_seconds``.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from sweeperd.errors import OutOfMemory
from sweeperd.runtime import malloc, mark, mcentral, mheap, owners, specials
from sweeperd.runtime.heap import Heap
from sweeperd.runtime.shards import claim_next, release_chunk
from sweeperd.runtime.sizeclasses import (
    CLASS_NELEMS,
    CLASS_NPAGES,
    CLASS_NWORDS,
    CLASS_SIZE,
    PAGE_SIZE,
    large_npages,
)
from sweeperd.runtime.spanset import full_swept
from sweeperd.runtime.sweep import sweep_batch
from sweeperd.sys import failpoint
from sweeperd.workload.scenario import Schedule, State

# Upper bounds (s) of the refill-time histogram's buckets; one more bucket counts the rest.
ALLOC_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
                 5e-2, 0.1, 0.25, 0.5, 1.0)
KEEP = np.int32(2**31 - 2)  # death of a kept object: until the schedule's target drops it
PIN = np.int32(2**31 - 1)  # death of a pinned object: never
BULK_BYTES = 512 << 10  # a scheduled mutator fills whole spans (the bulk path) above this
BUDGET_CAP_S = 1.0  # garbage owed while paused is capped at this many seconds' worth
BULK_PAGES = 64  # pages of spans a bulk step fills at least (512 KiB)...
BULK_PAGES_MAX = 1024  # ...and at most (8 MiB, and 1/64 of the heap): a step's fixed cost
# (~1 ms of numpy calls and lock round trips) is paid per step, so bigger steps allocate
# faster (measured in-process on alloc-storm: 64 pages 0.8, 256 2.1, 1024 3.7 GB per
# CPU-second); a scheduled step is also held to a sixteenth of its live target, so the GC's
# trigger is not overshot by much


@dataclass(frozen=True)
class Workload:
    """What a mutator allocates (the config's ``[mutators]`` keys, less ``count``)."""

    alloc_rate: int = 0  # objects/s; 0 = as fast as it can (the bulk path)
    size_classes: tuple[int, ...] = (2, 6, 20, 45)
    mean_lifetime_cycles: float = 1.5  # geometric lifetime, in GC cycles
    finalizer_fraction: float = 0.001
    large_fraction: float = 0.0005  # chance per object of a large (class 0) object instead
    large_max_kib: int = 256

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_classes"] = list(self.size_classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Workload:
        return cls(**{**d, "size_classes": tuple(d["size_classes"])})


_SERIALS = itertools.count()
SLOT_BITS = 10  # an object id is ``span << SLOT_BITS | slot``: no class has over 1024 slots
assert int(CLASS_NELEMS.max()) <= 1 << SLOT_BITS


@dataclass
class Chunk:
    """Objects allocated together (one seed), **sorted by death**: a mark drops the dead as a
    prefix, without looking at them.  4 bytes per live object (a packed id), where a span,
    slot and death per object took 10: at 16 GiB a workload of 16-byte objects keeps a few
    hundred million of them live.  ``deaths[i]`` is the death mark of the objects
    ``ids[ends[i-1]:ends[i]]`` (an object is live at marks numbered below its death)."""

    ids: np.ndarray  # uint32 packed ids, ascending death
    seed: int
    deaths: np.ndarray  # distinct deaths, ascending
    ends: np.ndarray  # where each death's objects end in ids
    keep_bytes: int = 0  # bytes of its kept objects (death KEEP): what dropping it frees
    serial: int = field(default_factory=lambda: next(_SERIALS))  # new for every new chunk

    def __post_init__(self) -> None:
        # the earliest death, as a Python int (-1 when empty): survivors' fast path
        self.first_death = int(self.deaths[0]) if self.deaths.size else -1

    @classmethod
    def of(cls, spans: np.ndarray, idx: np.ndarray, seed: int, death: np.ndarray,
           keep_bytes: int = 0) -> Chunk:
        ids = (spans.astype(np.uint32) << np.uint32(SLOT_BITS)) | idx.astype(np.uint32)
        order = np.argsort(death, kind="stable")
        d = death[order]
        cut = np.flatnonzero(d[1:] != d[:-1]) + 1
        deaths = d[np.concatenate(([0], cut))] if d.size else d
        ends = np.append(cut, d.size).astype(np.int64)
        return cls(ids[order], seed, deaths, ends, keep_bytes)

    def drop_kept(self, marks: int) -> Chunk:
        """The chunk with its kept objects dead at mark ``marks`` (pinned ones stay)."""
        counts = np.diff(np.concatenate(([0], self.ends)))
        death = np.repeat(self.deaths, counts)
        death[death == KEEP] = marks
        return Chunk.of(self.span, self.idx, self.seed, death)

    @property
    def objects(self) -> int:
        return int(self.ids.size)

    @property
    def span(self) -> np.ndarray:
        return _unpack(self.ids)[0]

    @property
    def idx(self) -> np.ndarray:
        return _unpack(self.ids)[1]

    def survivors(self, marks: int) -> Chunk | None:
        """The chunk less the objects dead at mark ``marks`` (None when all are)."""
        if self.first_death > marks:  # none dies: the common case, without numpy
            return self
        k = int(np.searchsorted(self.deaths, marks, side="right"))
        if k == 0 and self.deaths.size:
            return self
        if k == self.deaths.size:
            return None
        cut = int(self.ends[k - 1])
        ids = self.ids[cut:]
        if ids.base is not None and 2 * ids.size < ids.base.size:
            ids = ids.copy()  # let the dead part's memory go
        return Chunk(ids, self.seed, self.deaths[k:], self.ends[k:] - cut, self.keep_bytes)


@dataclass
class WholeSpans:
    """Fresh spans that one bulk step filled completely with objects of one small class,
    all of one death (pinned objects among them are recorded apart, as a :class:`Chunk`):
    4 bytes per span, not per object, and marked span by span
    (:func:`~sweeperd.runtime.mark.mark_whole_spans`).  While the chunk lives every slot of
    its spans is one of its objects, so no one else allocates in them; when it dies the
    sweep frees them whole (less any pinned object)."""

    spans: np.ndarray  # int64, ascending
    sizeclass: int
    seed: int
    death: int
    keep_bytes: int = 0
    pinned: int = 0  # of its slots, the pinned objects (each also in a Chunk of its own)

    @property
    def objects(self) -> int:
        """The objects it alone stands for: every slot but the pinned."""
        return int(self.spans.size) * int(CLASS_NELEMS[self.sizeclass]) - self.pinned

    def survivors(self, marks: int) -> WholeSpans | None:
        return self if self.death > marks else None

    def drop_kept(self, marks: int) -> WholeSpans:
        return replace(self, death=marks) if self.death == KEEP else self


Live = Chunk | WholeSpans


@dataclass
class MutatorStats:
    objects_allocated: int = 0
    bytes_allocated: int = 0
    alloc_seconds: float = 0.0
    spans_swept: int = 0
    pages_swept: int = 0
    objects_freed: int = 0
    oom_waits: int = 0
    payload_errors: int = 0
    lost_objects: int = 0
    objects_checked: int = 0
    live_objects: int = 0
    finalizers_set: int = 0
    finalizers_run: int = 0  # run by its sweeps to make room in a full queue
    marks: int = 0
    marked_bytes: int = 0  # bytes of the objects its last mark marked
    mark_seconds: float = 0.0  # time spent marking (the shell times it)
    refills: int = 0
    refill_seconds: float = 0.0
    refill_buckets: list[int] = field(default_factory=lambda: [0] * (len(ALLOC_BUCKETS) + 1))

    def as_dict(self) -> dict[str, float]:
        d: dict[str, float] = {k: v for k, v in self.__dict__.items() if k != "refill_buckets"}
        d.update({f"refill_le_{i}": float(c) for i, c in enumerate(self.refill_buckets)})
        return d

    def observe_refill(self, seconds: float) -> None:
        self.refills += 1
        self.refill_seconds += seconds
        self.refill_buckets[bisect.bisect_left(ALLOC_BUCKETS, seconds)] += 1


@dataclass(frozen=True)
class Mix:
    """What one step allocates: size classes (uniform), the large and finalizer fractions,
    and whether it fills whole spans at once (the bulk path)."""

    size_classes: tuple[int, ...]
    large_fraction: float
    finalizer_fraction: float
    bulk: bool
    bulk_pages: int = 0  # pages a bulk step fills (0: BULK_PAGES_MAX)


@dataclass
class Mutator:
    heap: Heap
    me: int
    cfg: Workload
    debug: bool = False
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    mcache: dict[int, int] = field(default_factory=dict)
    live: list[Live] = field(default_factory=list)
    stats: MutatorStats = field(default_factory=MutatorStats)
    cycle: int = 0
    sweep_pages_per_byte: float = 0.0
    sweep_debt: float = 0.0
    seeds: int = 0
    cand: mcentral.Candidates = field(default_factory=mcentral.Candidates)
    schedule: Schedule | None = None  # a scenario's share (None: the geometric model)
    t0: float = 0.0  # when the schedule started (time.monotonic)
    kept_bytes: int = 0  # bytes of kept and pinned objects held
    budget: float = 0.0  # garbage bytes the schedule allows now
    last_t: float | None = None
    nth: int = 0  # objects allocated under the schedule (every Nth is pinned)
    _keep: bool = False  # the current step allocates kept objects
    _every: int = 0
    _refill_s: float = 0.0  # time in refills during the current step
    _refilled: bool = False
    _mix: Mix | None = None  # the current step's
    whole_spans: bool = True  # record filled fresh spans as WholeSpans (False: per object)
    _heap_pages_cap: int = BULK_PAGES_MAX  # (set from the heap's size)
    _plan: mark.MarkPlan | None = None  # the mark of the live Chunks, kept while they
    _plan_key: tuple[int, ...] = ()  # ...are the same chunks (their serials)

    def __post_init__(self) -> None:
        if self.heap.npages << SLOT_BITS > 1 << 32:
            raise ValueError(f"a heap of {self.heap.npages} pages is too large for the "
                             f"mutator's 32-bit object ids (at most {1 << (32 - SLOT_BITS)})")
        # a bulk step takes at most 1/64 of the heap: on a small heap a big step would fill
        # it in a few steps
        self._heap_pages_cap = _bulk_pages(self.heap.npages / 64)

    @property
    def owner(self) -> int:
        return owners.mutator(self.me)

    def _lifetimes(self, n: int, elem_bytes: int) -> tuple[np.ndarray, int]:
        """Deaths of ``n`` new objects (4 B a live object) and the bytes of the kept ones."""
        if self.schedule is None:
            p = min(1.0, 1.0 / max(self.cfg.mean_lifetime_cycles, 1e-9))
            return (self.stats.marks + self.rng.geometric(p, n)).astype(np.int32), 0
        death = np.full(n, KEEP if self._keep else self.stats.marks, dtype=np.int32)
        if self._every:
            first = (-self.nth) % self._every  # the first of them whose number divides
            death[first::self._every] = PIN
        self.nth += n
        kept = int(np.count_nonzero(death >= KEEP)) * elem_bytes
        self.kept_bytes += kept
        return death, int(np.count_nonzero(death == KEEP)) * elem_bytes

    def _record(self, span: int | np.ndarray, idx: np.ndarray, elem_bytes: int) -> None:
        """Write the new objects' payloads and remember them as live (one class)."""
        self.seeds += 1
        seed = (self.owner << 48) | self.seeds
        spans = np.broadcast_to(np.asarray(span, dtype=np.int32), idx.shape).copy()
        malloc.write_payload(self.heap, spans, idx, seed)
        death, keep_bytes = self._lifetimes(idx.size, elem_bytes)
        if (death > self.stats.marks).any():  # (garbage alone dies at the next mark: as
            self.live.append(Chunk.of(spans, idx, seed, death, keep_bytes))  # _record_whole)
        for i in self._finalized(idx.size).tolist():
            specials.set_finalizer(self.heap, int(spans[i]), int(idx[i]))

    def _record_whole(self, spans: np.ndarray, c: int) -> None:
        """:meth:`_record` for fresh ``spans`` (ascending) filled whole with small class
        ``c``: the payload written a run of pages at a time, and the objects remembered as one
        :class:`WholeSpans` when they share a death (the schedule's; or a geometric lifetime
        that is always 1), the pinned among them as a :class:`Chunk`.  Garbage with no pinned
        object is not remembered at all: it is dead at the next mark, which would forget it."""
        self.seeds += 1
        seed = (self.owner << 48) | self.seeds
        ne, size = int(CLASS_NELEMS[c]), int(CLASS_SIZE[c])
        n = int(spans.size) * ne
        malloc.write_span_payloads(self.heap, spans, seed, int(CLASS_NPAGES[c]))
        death, keep_bytes = self._lifetimes(n, size)
        for i in self._finalized(n).tolist():
            specials.set_finalizer(self.heap, int(spans[i // ne]), i % ne)
        pinned = np.flatnonzero(death == PIN)
        others = death[death != PIN]
        if others.size and (others != others[0]).any():  # each its own death
            self.live.append(Chunk.of(np.repeat(spans, ne), np.tile(np.arange(ne), spans.size),
                                      seed, death, keep_bytes))
            return
        if pinned.size:
            self.live.append(Chunk.of(spans[pinned // ne], pinned % ne, seed,
                                      death[pinned]))
        if others.size and int(others[0]) > self.stats.marks:  # (garbage dies at the mark)
            self.live.append(WholeSpans(spans, c, seed, int(others[0]), keep_bytes,
                                        int(pinned.size)))

    def _finalized(self, n: int) -> np.ndarray:
        """Which of ``n`` new objects get a finalizer: each with the mix's probability."""
        fin = (self._mix or self._default_mix).finalizer_fraction
        if fin <= 0:
            return np.empty(0, dtype=np.int64)
        k = int(self.rng.binomial(n, fin))
        self.stats.finalizers_set += k
        return np.sort(self.rng.choice(n, k, replace=False)) if k else np.empty(0, np.int64)

    @property
    def _default_mix(self) -> Mix:
        c = self.cfg
        return Mix(c.size_classes, c.large_fraction, c.finalizer_fraction, c.alloc_rate == 0)

    def step(self, burst: int = 256, mix: Mix | None = None) -> int:
        """One burst of allocation; returns objects allocated (0 when the heap is full)."""
        t0 = time.perf_counter()
        self._mix = m = mix or self._default_mix
        self._refill_s, self._refilled = 0.0, False
        if m.large_fraction and self.rng.random() < m.large_fraction * burst:
            n = self._alloc_large()
        elif m.bulk:
            pages = min(m.bulk_pages or BULK_PAGES_MAX, self._heap_pages_cap)
            classes, p = _bulk_mix(m.size_classes, pages)
            n = self._alloc_bulk(int(classes[self.rng.choice(classes.size, p=p)]), pages)
        else:
            n = self._alloc_small(int(self.rng.choice(m.size_classes)), burst)
        if self._refilled:
            self.stats.observe_refill(self._refill_s)
        self.stats.alloc_seconds += time.perf_counter() - t0
        return n

    def step_scheduled(self, now: float) -> int:
        """One step of the schedule at ``now`` (time.monotonic): kept objects while below the
        target, else garbage while the rate allows; 0 when there is nothing to do yet (or the
        heap is full)."""
        assert self.schedule is not None, "step_scheduled without a schedule"
        st = self.schedule.at(now - self.t0)
        dt = 0.0 if self.last_t is None else max(0.0, now - self.last_t)
        self.last_t = now
        rate = st.garbage_bytes_per_s
        if math.isinf(rate):
            self.budget = math.inf
        else:
            self.budget = min(self.budget + rate * dt, max(rate * BUDGET_CAP_S, 0.0))
        need = st.live_bytes - self.kept_bytes
        if need > 0:
            self._keep, amount = True, need
        elif self.budget > 0:
            self._keep, amount = False, self.budget
        else:
            return 0
        self._every = st.long_lived_every
        before = self.stats.bytes_allocated
        n = self.step(mix=_mix_of(st, amount))
        if not self._keep and not math.isinf(self.budget):
            self.budget -= self.stats.bytes_allocated - before
        return n

    def _alloc_bulk(self, c: int, pages: int = BULK_PAGES) -> int:
        """Fill a batch of spans of small class ``c`` (about ``pages`` pages) completely,
        vectorized: the path of a mutator allocating as fast as it can."""
        nspans = max(1, pages // int(CLASS_NPAGES[c]))
        t0 = time.perf_counter()
        try:
            spans, _, work = mcentral.cache_spans(self.heap, c, nspans, self.owner, self.cand)
        except OutOfMemory:
            self.stats.oom_waits += 1
            return 0
        finally:
            self._refill_s += time.perf_counter() - t0
            self._refilled = True
        self._count_sweep(work)
        fresh = np.sort(spans[self.heap.span_alloc_count[spans] == 0])
        ne = int(CLASS_NELEMS[c])
        n = 0
        if fresh.size:
            n += malloc.alloc_all(self.heap, fresh)
        os_, oi = [], []
        for s in spans[self.heap.span_alloc_count[spans] != ne].tolist():
            idx = malloc.alloc_objects(self.heap, s, ne)
            os_.append(np.full(idx.size, s))
            oi.append(idx)
            n += int(idx.size)
        failpoint.hit("mutator.cached")  # holding the batch's spans, cached
        # written while still cached, as Go's mcache holds a span while it fills
        if fresh.size and self.whole_spans:
            self._record_whole(fresh, c)
        elif fresh.size:  # the object-by-object reference the whole-span path is held to
            self._record(np.repeat(fresh, ne), np.tile(np.arange(ne), fresh.size),
                         int(CLASS_SIZE[c]))
        if os_:
            self._record(np.concatenate(os_), np.concatenate(oi), int(CLASS_SIZE[c]))
        self._count_sweep(mcentral.uncache_spans(self.heap, spans, self.cand))
        if n:
            self._paid(n * int(CLASS_SIZE[c]))
        return n

    def _alloc_small(self, c: int, burst: int) -> int:
        span = self.mcache.get(c, -1)
        idx = malloc.alloc_objects(self.heap, span, burst) if span >= 0 else np.empty(0, int)
        if idx.size == 0:
            if span >= 0:
                mcentral.uncache_span(self.heap, span)
                del self.mcache[c]
            t0 = time.perf_counter()
            try:
                span, _, work = mcentral.cache_span(self.heap, c, self.owner, self.cand)
            except OutOfMemory:
                self.stats.oom_waits += 1
                return 0
            finally:
                self._refill_s += time.perf_counter() - t0
                self._refilled = True
            self._count_sweep(work)
            self.mcache[c] = span
            failpoint.hit("mutator.cached")
            idx = malloc.alloc_objects(self.heap, span, burst)
        self._record(span, idx, int(CLASS_SIZE[c]))
        self._paid(idx.size * int(CLASS_SIZE[c]))
        return int(idx.size)

    def _alloc_large(self) -> int:
        nbytes = int(self.rng.integers(32 * 1024 + 1, self.cfg.large_max_kib * 1024 + 1))
        npages = large_npages(nbytes)
        h = self.heap.sweepgen
        t0 = time.perf_counter()
        try:
            with self.heap.lock:
                failpoint.stop("mutator.locked")  # (a stopped holder must not wedge anyone)
                span, nscav = mheap.alloc_span(self.heap, 0, npages)
                idx = malloc.alloc_objects(self.heap, span, 1)
                self.heap.span_set[span] = full_swept(h)
            if nscav and self.heap.on_alloc_scav is not None:  # Go 1.21's scavenge assist
                self.heap.on_alloc_scav(nscav)
        except OutOfMemory:
            self.stats.oom_waits += 1
            return 0
        finally:
            self._refill_s += time.perf_counter() - t0
            self._refilled = True
        self._record(span, idx, npages * 8192)
        self._paid(npages * 8192)
        return 1

    def _count_sweep(self, work: Any) -> None:
        self.stats.spans_swept += work.spans
        self.stats.pages_swept += work.pages
        self.stats.objects_freed += work.objects_freed
        self.stats.finalizers_run += work.finalizers_run

    def _paid(self, nbytes: int) -> None:
        """Allocation bookkeeping plus proportional sweep: pay the debt in claimed chunks."""
        self.stats.bytes_allocated += nbytes
        self.sweep_debt += nbytes * self.sweep_pages_per_byte
        if self.sweep_debt < 1:
            return
        t0 = time.perf_counter()
        self._pay_debt()
        if self._refilled:  # Go pays sweep credit in the refill (deductSweepCredit)
            self._refill_s += time.perf_counter() - t0

    def _pay_debt(self) -> None:
        while self.sweep_debt >= 1:
            chunk = max(16, int(self.sweep_debt))
            spans = claim_next(self.heap, self.owner, chunk)
            if spans is None:
                self.sweep_debt = 0
                break
            self.sweep_debt -= chunk
            if spans.size:
                self._count_sweep(sweep_batch(self.heap, spans))
            release_chunk(self.heap, self.owner)

    def flush(self) -> None:
        """Give back every cached span (Go flushes mcaches when a cycle starts)."""
        for c, span in list(self.mcache.items()):
            mcentral.uncache_span(self.heap, span)
            del self.mcache[c]

    def mark(self, cycle: int, now: float | None = None) -> None:
        """Mark this mutator's live objects for the cycle about to sweep (``now``, the
        time.monotonic of the mark, is where a schedule's target is read)."""
        self.cycle = cycle
        if self.schedule is not None:
            assert now is not None, "a scheduled mutator's mark needs the time"
            self._drop_to(self.schedule.at(now - self.t0).live_bytes)
        survivors = (ch.survivors(self.stats.marks) for ch in self.live)
        self.live = [ch for ch in survivors if ch is not None]
        if self.debug:
            self._verify()
        marked = 0
        chunks = [ch for ch in self.live if isinstance(ch, Chunk)]
        if sum(ch.ids.size for ch in chunks) <= mark.MARK_BATCH:
            # the same chunks as last time, mostly: the plan of their words is kept
            key = tuple(ch.serial for ch in chunks)
            if self._plan is None or key != self._plan_key:
                ids = np.concatenate([ch.ids for ch in chunks]) if chunks else np.empty(
                    0, dtype=np.uint32)
                self._plan, self._plan_key = mark.MarkPlan.of(self.heap, *_unpack(ids)), key
            self._plan.apply(self.heap)
            marked += self._plan.nbytes
        else:  # too many to keep a plan of (bounded memory): marked in batches, sorted anew
            self._plan = None
            for spans, idx in _batches(chunks, mark.MARK_BATCH):
                mark.mark_objects(self.heap, spans, idx)
                marked += int(self.heap.elem_sizes(spans).sum())
        whole = [ch for ch in self.live if isinstance(ch, WholeSpans)]
        if whole:
            mark.mark_whole_spans(self.heap, np.concatenate([w.spans for w in whole]))
            marked += sum(w.objects * int(CLASS_SIZE[w.sizeclass]) for w in whole)
        self.stats.marked_bytes = marked
        self.stats.marks += 1
        self.stats.live_objects = sum(ch.objects for ch in self.live)

    def _drop_to(self, target: float) -> None:
        """Kill the oldest kept chunks until at most ``target`` bytes are kept (or none is
        left to drop: pinned objects stay)."""
        for i, ch in enumerate(self.live):
            if self.kept_bytes <= target:
                break
            if ch.keep_bytes:
                self.live[i] = ch.drop_kept(self.stats.marks)
                self.kept_bytes -= ch.keep_bytes

    def _verify(self) -> None:
        """Every live object is still allocated and its payload intact."""
        for ch in self.live:
            if isinstance(ch, WholeSpans):
                self._verify_whole(ch)
                continue
            spans, idx = ch.span, ch.idx
            w = self.heap.bits[self.heap.alloc_buf(spans), idx >> 6, spans]
            allocated = (w >> (idx & 63).astype(np.uint64)) & np.uint64(1) == 1
            self.stats.lost_objects += int((~allocated).sum())
            ok = malloc.verify_payload(self.heap, spans, idx, ch.seed)
            self.stats.payload_errors += int((~ok).sum())
            self.stats.objects_checked += int(idx.size)

    def _verify_whole(self, ch: WholeSpans) -> None:
        """:meth:`_verify` of whole spans: every slot allocated, every object's words intact."""
        h, c = self.heap, ch.sizeclass
        ne, nw = int(CLASS_NELEMS[c]), int(CLASS_NWORDS[c])
        bits = np.ascontiguousarray(h.bits[h.alloc_buf(ch.spans), :nw, ch.spans])
        allocated = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :ne]
        self.stats.lost_objects += int(ne * ch.spans.size - allocated.sum())
        ok = malloc.verify_span_payloads(h, ch.spans, ne, int(CLASS_SIZE[c]) >> 3, ch.seed)
        self.stats.payload_errors += int((~ok).sum())
        self.stats.objects_checked += ch.objects


@functools.lru_cache(maxsize=256)
def _bulk_mix(size_classes: tuple[int, ...], pages: int) -> tuple[np.ndarray, np.ndarray]:
    """The small classes of a bulk mix and the chance of each per step: inversely as the
    objects a step of it allocates, so that each class gets the same number of objects in
    the long run — Go's reference program draws each object's class uniformly, so the
    bytes go to the classes as their sizes (with 16 B..4864 B, 92% to the largest).  A
    step fills about ``pages`` pages whatever the class (about the same bytes), so per step
    the classes are not uniform."""
    classes = np.array([c for c in size_classes if c != 0], dtype=np.int64)
    if classes.size == 0:
        raise ValueError("a bulk mix needs a small size class")
    per_step = np.maximum(1, pages // CLASS_NPAGES[classes]) * CLASS_NELEMS[classes]
    w = 1.0 / per_step
    return classes, w / w.sum()


def _mix_of(st: State, amount: float) -> Mix:
    """The mix of a scheduled step that may allocate ``amount`` bytes: bulk from
    :data:`BULK_BYTES` (or at a ``"max"`` rate), in steps of up to ``amount`` and a
    sixteenth of the live target, a power of two of pages within
    [:data:`BULK_PAGES`, :data:`BULK_PAGES_MAX`]."""
    bulk = amount >= BULK_BYTES or math.isinf(st.garbage_bytes_per_s)
    cap = min(amount, st.live_bytes / 16) if st.live_bytes > 0 else amount
    pages = _bulk_pages(cap / PAGE_SIZE if math.isfinite(cap) else BULK_PAGES_MAX)
    return Mix(st.size_classes, st.large_fraction, st.finalizer_fraction, bulk, pages)


def _bulk_pages(want: float) -> int:
    """The largest power of two of pages within [:data:`BULK_PAGES`,
    :data:`BULK_PAGES_MAX`] that is at most ``want`` (:data:`BULK_PAGES` below it)."""
    pages = BULK_PAGES
    while pages < BULK_PAGES_MAX and pages * 2 <= want:
        pages *= 2
    return pages


def _batches(chunks: list[Chunk], limit: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(spans, indices) of the objects of ``chunks``, about ``limit`` objects at a time."""
    ids: list[np.ndarray] = []
    n = 0
    for ch in chunks:
        ids.append(ch.ids)
        n += ch.ids.size
        if n >= limit:
            yield _unpack(np.concatenate(ids))
            ids, n = [], 0
    if ids:
        yield _unpack(np.concatenate(ids))


def _unpack(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ((ids >> np.uint32(SLOT_BITS)).astype(np.int64),
            (ids & np.uint32((1 << SLOT_BITS) - 1)).astype(np.int64))
