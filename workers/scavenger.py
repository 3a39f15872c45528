"""Scavenger process: wake, release what the policy says, sleep; release everything on
``release_all``.

The wake's logic is :class:`sweeperd.pacing.bgscavenge.Scavenger` and the policies are in
``sweeperd.pacing``; this is the process loop.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

from sweeperd.pacing import policies
from sweeperd.pacing.bgscavenge import Scavenger
from sweeperd.pacing.scavpace import Pacer
from sweeperd.roles import Role
from sweeperd.runtime import owners
from sweeperd.runtime.heap import T_CPU_NS, Heap, HeapHandle
from sweeperd.sys.sysmem import SysMem, calibrate_vectored
from sweeperd.sys.tuning import prepare_worker_memory
from sweeperd.wire.beat import Beat
from sweeperd.wire.link import Link
from sweeperd.wire.protocol import (
    HeartbeatMsg,
    PolicyFigures,
    ReleaseAllMsg,
    ScavengerStats,
    StopMsg,
)


def main(handle: dict[str, Any], endpoint: str, fraction: float, ncpu: int,
         vectored: str, heartbeat_ms: int, policy: str = "go", params: Any = None) -> None:
    """Daemon shell: wake, work, sleep as the policy says; release everything on
    ``release_all``."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    prepare_worker_memory()
    if vectored == "auto":  # measure both ways here, keep the faster
        rates = calibrate_vectored()
        use_vectored = rates["vectored"] > rates["per_run"]
    else:
        use_vectored = vectored == "on"
    heap = Heap.attach(HeapHandle.from_dict(handle))
    sm = SysMem(base=heap.arena.ctypes.data, size=heap.heap_bytes, shared=True,
                vectored=use_vectored)
    sc = Scavenger(heap, sm, Pacer(fraction=fraction, ncpu=ncpu),
                   policy=policies.make(policy, params))
    link = Link(endpoint, Role.SCAVENGER, 0)
    heap.me = owners.SCAVENGER  # its row of the heap's running counters
    beat = Beat(heap, owners.SCAVENGER, heartbeat_ms / 1000).start()
    cpu0 = time.process_time_ns()
    last_hb = 0.0
    try:
        while not link.orphaned():
            pages, worked = sc.wake()
            cpu = time.process_time_ns()  # its CPU, tallied in its row as it goes
            heap.tally(T_CPU_NS, cpu - cpu0)
            cpu0 = cpu
            sleep = sc.sleep_for(pages, worked, heartbeat_ms / 1000)
            t = time.perf_counter()
            msg = link.recv(int(min(sleep, heartbeat_ms / 1000) * 1000))
            if pages and sc.policy.paced:
                sc.pacer.observe(worked, time.perf_counter() - t)
            if msg is not None:
                match msg:
                    case StopMsg():
                        break
                    case ReleaseAllMsg():
                        sc.release_all()
            now = time.monotonic()
            if msg is not None or now - last_hb >= heartbeat_ms / 1000:
                # what it released is in its row of the heap's tallies: only gauges here
                link.send(HeartbeatMsg(stats=ScavengerStats(
                    sleep_ratio=float(sc.pacer.sleep_ratio), vectored=use_vectored,
                    policy=PolicyFigures(**{k: float(v) for k, v in
                                            sc.policy.figures().items()}))))
                last_hb = now
    except BaseException:
        link.crashed()
        raise
    finally:
        beat.stop()
        link.close()
        heap.close(dying=sys.exc_info()[0] is not None)  # (its exception is the news)
