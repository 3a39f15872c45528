"""Liveness that a long operation cannot starve: a beat word in shared memory, from a thread.

Theory of operation
-------------------
A worker answers the control plane only between steps of its main loop, and one step on a
large heap (a mark of millions of live objects, an on-demand sweep, a wait for the heap lock)
can outlast ``dead_after_ms``.  So each worker also runs a :class:`Beat`: a daemon thread that
stores ``CLOCK_MONOTONIC`` (ns, the same clock in every process) into ``heap.beats[owner]``
every period.  Python switches threads every few milliseconds and numpy releases the GIL in
its long loops, so the thread beats while the main thread is busy; a process that is stopped
(SIGSTOP) or gone stops beating, and is then detected as before.  The coordinator counts a
worker as heard at ``max(last frame, last beat)``.

A word per claimer id; each worker writes only its own, the coordinator only reads.
"""

from __future__ import annotations

import threading
import time

from sweeperd.runtime.heap import Heap


class Beat:
    def __init__(self, heap: Heap, owner: int, period_s: float) -> None:
        self.heap = heap
        self.owner = owner
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beat", daemon=True)

    def _run(self) -> None:
        while True:
            self.heap.beats[self.owner] = time.monotonic_ns()
            if self._stop.wait(self.period_s):
                return

    def start(self) -> Beat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and join the thread (before the heap is unmapped: it holds a view)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def last_beat_s(heap: Heap, owner: int) -> float:
    """When ``owner`` last beat, on ``time.monotonic()``'s scale (0.0 if never)."""
    return int(heap.beats[owner]) / 1e9
