"""The heap's tallies: what a worker did, kept in shared memory in an order that a kill at any
line leaves exact.  A real process is killed (SIGKILL, by a trace function) at the k-th line
its release or its allocation executes, for every k until one runs through; after the
coordinator's recovery the books must equal the kernel (a release) or the bitmaps (an
allocation) exactly, whatever line it died at.

Each of those processes is forked by one spawned driver that has imported everything once (a
spawn per k paid the imports again: ~0.5 s a kill, a hundred kills a test); the child is a
real process all the same, killed by the kernel, its exit status read by ``waitpid``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback

import multiprocess as mp
import numpy as np
import pytest

from sweeperd.daemon.events import Role, Slot
from sweeperd.daemon.heapwork import HeapWork
from sweeperd.daemon.totals import Totals
from sweeperd.runtime import mheap, owners
from sweeperd.runtime.heap import (
    F_ALLOC,
    RELEASE_BATCH,
    SWEEP_BATCH,
    T_OBJECTS_ALLOCATED,
    T_OBJECTS_FREED,
    Heap,
    HeapHandle,
)
from sweeperd.runtime.heapstats import read_tallies
from sweeperd.runtime.sizeclasses import PAGE_SIZE
from sweeperd.sys.sysmem import SysMem

CTX = mp.get_context("spawn")
MAX_LINES = 400  # bound on the lines the traced functions execute (a runaway guard)


def _die_at_line(k: int, modules: tuple[str, ...], funcs: frozenset[str]):
    """A trace function that SIGKILLs this process at the k-th line executed inside
    ``funcs`` of ``modules`` (file name endings)."""
    n = [0]

    def local(frame, event, arg):
        if event == "line":
            n[0] += 1
            if n[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
        return local

    def tracer(frame, event, arg):
        code = frame.f_code
        if code.co_name in funcs and code.co_filename.endswith(modules):
            return local
        return None

    return tracer


def releaser(handle_json: str, k: int) -> None:
    from sweeperd.runtime import scavenge

    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    heap.me = owners.SCAVENGER
    sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True)
    sys.settrace(_die_at_line(k, ("runtime/scavenge.py", "runtime/heap.py"), frozenset(
        {"release", "finish", "_tally_calls", "begin_batch", "apply_batch", "tally",
         "count"})))
    scavenge.scavenge(heap, sm, 10_000)
    sys.settrace(None)
    heap.close()


def allocator(handle_json: str, k: int) -> None:
    from sweeperd.workload.mutator import Mutator, Workload

    heap = Heap.attach(HeapHandle.from_dict(json.loads(handle_json)))
    heap.me = owners.mutator(0)
    m = Mutator(heap, 0, Workload(size_classes=(6,), finalizer_fraction=0.0,
                                  large_fraction=0.0), rng=np.random.default_rng(3))
    m.step()  # its spans cached, then a second step's allocation is the one cut
    sys.settrace(_die_at_line(k, ("runtime/malloc.py", "runtime/heap.py"), frozenset(
        {"alloc_objects", "alloc_all", "_counted", "begin_batch", "apply_batch"})))
    m.step()
    sys.settrace(None)
    heap.close()


def _drive(conn) -> None:
    """In a spawned process: for each (target, args) received, fork a child that runs it and
    send back its exit code as ``Process.exitcode`` gives it (-SIGKILL for a kill); None
    ends the driver."""
    while (job := conn.recv()) is not None:
        target, args = job
        pid = os.fork()
        if pid == 0:  # the child: never back into the driver's loop
            code = 1
            try:
                target(*args)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        conn.send(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))


@pytest.fixture(scope="module")
def run():
    """``run(target, *args)``: the exit code of ``target(*args)`` in a fresh process (a
    child forked by the driver); the driver is ended, and waited for, on every path."""
    here, there = CTX.Pipe()
    driver = CTX.Process(target=_drive, args=(there,))
    driver.start()
    there.close()

    def _run(target, *args) -> int:
        here.send((target, args))
        assert here.poll(120), "the process hung"
        return here.recv()

    try:
        yield _run
    finally:
        with contextlib.suppress(OSError):  # a driver already gone
            here.send(None)
        driver.join(60)
        if driver.exitcode is None:
            driver.kill()
            driver.join()
        here.close()


def _freed_backed_heap() -> Heap:
    heap = Heap.create(16 << 20)
    spans = [mheap.alloc_span(heap, 0, 8)[0] for _ in range(12)]
    heap.arena[: 12 * 8 * PAGE_SIZE] = 0xA5  # every page written: the kernel backs them
    mheap.free_spans(heap, np.array(spans[::2]))  # six free backed runs of 8 pages
    return heap


def test_a_release_killed_at_any_line_is_counted_once_as_the_kernel_saw_it(run):
    k = 0
    while True:
        k += 1
        assert k < MAX_LINES
        with _freed_backed_heap() as heap:
            backed0 = heap.arena_backed_bytes()
            code = run(releaser, json.dumps(heap.handle.to_dict()), k)
            heap.me = owners.COORDINATOR
            if code == 0:  # it ran through: every line has had its kill
                t = read_tallies(heap).scavenger
                assert t.kernel_bytes == backed0 - heap.arena_backed_bytes() == 48 * PAGE_SIZE
                break
            assert code == -signal.SIGKILL
            HeapWork(heap, SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes,
                                  shared=True), Totals(), False).recover(
                Slot(Role.SCAVENGER, 0))
            t = read_tallies(heap).scavenger
            released = backed0 - heap.arena_backed_bytes()
            assert t.kernel_bytes == released, f"killed at line {k}"
            assert t.pages == 48 or (t.pages == 0 and released == 0), f"killed at line {k}"
            assert not heap.tallies[:, RELEASE_BATCH[2]].any()
            assert not (heap.page_span <= -2).any()  # nothing left taken
    assert k > 10  # the kills really walked through the release


def test_an_allocation_killed_at_any_line_is_counted_as_its_bits_say(run):
    k = 0
    while True:
        k += 1
        assert k < MAX_LINES
        with Heap.create(16 << 20) as heap:
            code = run(allocator, json.dumps(heap.handle.to_dict()), k)
            if code == 0:
                break
            assert code == -signal.SIGKILL
            heap.me = owners.COORDINATOR
            HeapWork(heap, SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes,
                                  shared=True), Totals(), False).recover(Slot(Role.MUTATOR, 0))
            t = heap.tallies.sum(axis=0)
            in_heap = int(heap.span_alloc_count[heap.in_use_spans()].sum(dtype=np.int64))
            assert int(t[T_OBJECTS_ALLOCATED]) == in_heap + int(t[T_OBJECTS_FREED]), \
                f"killed at line {k}"
            assert read_tallies(heap).alloc.objects == int(t[T_OBJECTS_ALLOCATED])
            assert not heap.tallies[:, F_ALLOC].any()
    assert k > 5


@pytest.mark.parametrize("batch", [RELEASE_BATCH, SWEEP_BATCH])
def test_applying_a_batch_twice_is_applying_it_once(batch):
    with Heap.create(1 << 20) as heap:
        heap.me = owners.sweeper(3)
        tcols, _, flag = batch
        for t in tcols:
            heap.tallies[heap.me, t] = 100
        heap.begin_batch(batch, tuple(range(1, len(tcols) + 1)))
        assert heap.tallies[heap.me, flag] == 1
        assert [int(heap.tallies[heap.me, t]) for t in tcols] == [100] * len(tcols)
        heap.apply_batch(batch)
        once = heap.tallies.copy()
        heap.tallies[heap.me, flag] = 1  # a death after the totals, before the flag fell
        heap.apply_batch(batch, owners.sweeper(3))  # the recovery applies them again
        assert np.array_equal(heap.tallies, once)
        assert [int(heap.tallies[heap.me, t]) for t in tcols] == [
            100 + i for i in range(1, len(tcols) + 1)]
        assert not heap.tallies[:, flag].any()


def test_the_tallies_are_read_by_kind_of_worker():
    with Heap.create(1 << 20) as heap:
        from sweeperd.runtime.heap import (
            T_CPU_NS,
            T_MADVISE_BY,
            T_RELEASE_CPU_NS,
            T_RELEASED_KERNEL_BYTES,
            T_SWEPT_SPANS,
        )

        tl = heap.tallies
        tl[owners.SCAVENGER, T_RELEASED_KERNEL_BYTES] = 10
        tl[owners.COORDINATOR, T_RELEASED_KERNEL_BYTES] = 5
        tl[owners.sweeper(1), T_RELEASED_KERNEL_BYTES] = 7  # a freer (eager)
        tl[owners.mutator(2), T_RELEASED_KERNEL_BYTES] = 1
        tl[owners.SCAVENGER, T_CPU_NS] = 2_000_000_000
        tl[owners.sweeper(0), T_RELEASE_CPU_NS] = 3
        tl[owners.SCAVENGER, T_MADVISE_BY["REMOVE"]] = 4
        tl[owners.mutator(0), T_MADVISE_BY["REMOVE"]] = 2
        tl[owners.sweeper(0), T_SWEPT_SPANS] = 11
        tl[owners.COORDINATOR, T_SWEPT_SPANS] = 1
        tl[owners.mutator(1), T_SWEPT_SPANS] = 6
        tl[owners.mutator(1), T_OBJECTS_ALLOCATED] = 9
        t = read_tallies(heap)
        assert t.scavenger.kernel_bytes == 15 and t.on_free.kernel_bytes == 8
        assert t.scavenger.cpu_ns == 2_000_000_000 and t.on_free.cpu_ns == 3
        assert t.scavenger.calls()["REMOVE"] == 4 and t.on_free.calls()["REMOVE"] == 2
        assert t.background.spans == 12 and t.mutator.spans == 6
        assert t.alloc.objects == 9
        del tl  # (a view into the mapping: dropped before it is unmapped)
