"""Mutator process: allocate until told to mark; mark; wait for resume; repeat.

The workload itself (what is allocated, how long it lives, proportional sweep) is
:class:`sweeperd.workload.mutator.Mutator`; this is only the process loop around it.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import numpy as np

from sweeperd.roles import Role
from sweeperd.runtime import owners
from sweeperd.runtime.heap import Heap, HeapHandle
from sweeperd.runtime.scavenge import ReleaseOnFree, ScavengeAssist
from sweeperd.sys.tuning import prepare_worker_memory, release_free_heap
from sweeperd.wire.beat import Beat
from sweeperd.wire.link import Link
from sweeperd.wire.protocol import (
    HeartbeatMsg,
    MarkedMsg,
    MarkMsg,
    MutatorStats,
    ResumeMsg,
    StopMsg,
)
from sweeperd.workload.mutator import Mutator, Workload
from sweeperd.workload.scenario import Schedule, parse


def main(handle: dict[str, Any], me: int, endpoint: str, mcfg: dict[str, Any],
         heartbeat_ms: int, debug: bool, release_on_free: bool = False,
         scenario: tuple[str, float] | None = None, scavenge_assist: bool = False) -> None:
    """Daemon shell: allocate until told to mark; mark; wait for resume; repeat.
    ``scenario``: (its TOML, this mutator's share), or None; its clock comes with resume.
    ``scavenge_assist``: allocations scavenge over the memory limit (Go 1.21+)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator drains us with "stop"
    prepare_worker_memory()
    cfg = Workload.from_dict(mcfg)
    heap = Heap.attach(HeapHandle.from_dict(handle))
    link = Link(endpoint, Role.MUTATOR, me)
    heap.me = owners.mutator(me)  # its row of the heap's running counters
    if release_on_free:  # the eager policy: its on-demand sweeps release what they free
        ReleaseOnFree.install(heap)
    if scavenge_assist:  # the go policy at 1.21: allocation scavenges over the memory limit
        ScavengeAssist.install(heap)
    beat = Beat(heap, owners.mutator(me), heartbeat_ms / 1000).start()
    m = Mutator(heap, me, cfg, debug, np.random.default_rng([me, time.time_ns()]))
    if scenario is not None:
        text, share = scenario
        m.schedule = Schedule(parse(text, "the coordinator's scenario"), share)
    paused = True  # until the coordinator says resume: never allocate through a mark
    last_hb = time.monotonic()
    t_start = time.monotonic()
    try:
        while not link.orphaned():
            msg = link.recv(heartbeat_ms if paused else 0)
            if msg is not None:
                match msg:
                    case StopMsg():
                        break
                    case MarkMsg(cycle=cycle):
                        t0 = time.perf_counter()
                        m.flush()
                        m.mark(cycle, time.monotonic())
                        m.stats.mark_seconds += time.perf_counter() - t0
                        link.send(MarkedMsg(cycle=cycle, stats=_wire(m),
                                            marked_bytes=m.stats.marked_bytes))
                        paused = True
                        release_free_heap()  # the mark's temporaries and the dead's records
                    case ResumeMsg(sweep_pages_per_byte=rate, scenario_t0=t0):
                        m.sweep_pages_per_byte = rate
                        if t0 is not None:
                            m.t0 = t0
                        m.sweep_debt = 0.0
                        paused = False
            if not paused and m.schedule is not None:
                n = m.step_scheduled(time.monotonic())
                m.stats.objects_allocated += n
                if n == 0:
                    time.sleep(0.002)  # nothing due yet (or the heap is full)
            elif not paused:
                n = m.step()
                m.stats.objects_allocated += n
                if n == 0:
                    time.sleep(0.005)  # heap full: wait for the next cycle to free some
                elif cfg.alloc_rate:
                    ahead = m.stats.objects_allocated / cfg.alloc_rate - (
                        time.monotonic() - t_start)
                    if ahead > 0:
                        time.sleep(min(ahead, heartbeat_ms / 1000))
            now = time.monotonic()
            if now - last_hb >= heartbeat_ms / 1000:
                link.send(HeartbeatMsg(stats=_wire(m)))
                last_hb = now
    except BaseException:
        link.crashed()
        raise
    finally:
        beat.stop()
        link.close()
        heap.close(dying=sys.exc_info()[0] is not None)  # (its exception is the news)


def _wire(m: Mutator) -> MutatorStats:
    """Its figures the tallies do not carry (what it allocated, swept, freed and finalized is
    written to its row of the heap's tallies as the work is done, kept if it dies): timings,
    waits, checks, the refill histogram."""
    s = m.stats
    return MutatorStats(
        alloc_seconds=float(s.alloc_seconds), oom_waits=int(s.oom_waits),
        payload_errors=int(s.payload_errors), lost_objects=int(s.lost_objects),
        objects_checked=int(s.objects_checked), live_objects=int(s.live_objects),
        finalizers_set=int(s.finalizers_set), marks=int(s.marks),
        marked_bytes=int(s.marked_bytes), mark_seconds=float(s.mark_seconds),
        refills=int(s.refills), refill_seconds=float(s.refill_seconds),
        refill_buckets=tuple(int(c) for c in s.refill_buckets))
