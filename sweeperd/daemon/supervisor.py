"""Worker processes by slot: start, kill, reap, and who is who on the worker socket.

Theory of operation
-------------------
Every worker has a :class:`~sweeperd.daemon.cycle.Slot` (role, id) that outlives its
processes: a replacement takes the dead one's slot, and with it its claimer id in the heap.
The supervisor holds, per slot, the current process and, once the worker has said ``hello``,
its zmq identity.  An identity is **bound** only by a hello naming the slot *and* the pid of
the process started for it, and only once: a frame naming someone else, or a second hello,
cannot take a slot over.  A process is **reaped** (joined) before its slot is reported dead,
so recovery never runs while any of it still runs.

What it does not hold is membership: which slots exist, which are up, starting or being
killed, which have said hello, and who is pending are the cycle machine's (cycle.py); the
supervisor holds the processes and the identities that route frames, and :meth:`views` takes
who has said hello from the machine.

One owner: the coordinator's main loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sweeperd.daemon.cycle import Slot
from sweeperd.daemon.snapshot import WorkerView


@dataclass
class Proc:
    slot: Slot
    proc: Any  # a multiprocess.Process
    identity: bytes | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)


class Supervisor:
    def __init__(self, ctx: Any, target: Callable[[Slot], tuple[Callable[..., None], tuple]]):
        self.ctx = ctx  # a multiprocess context (spawn)
        self.target = target  # slot -> (entry point, its arguments)
        self.procs: dict[Slot, Proc] = {}
        self.by_identity: dict[bytes, Slot] = {}

    def start(self, slot: Slot) -> int:
        if slot in self.procs:
            raise RuntimeError(f"{slot} already has a process")
        fn, args = self.target(slot)
        p = self.ctx.Process(target=fn, args=args, name=f"sweeperd-{slot.role}-{slot.id}",
                             daemon=False)
        p.start()
        self.procs[slot] = Proc(slot, p)
        return int(p.pid)

    def bind(self, identity: bytes, slot: Slot, pid: int) -> bool:
        """A hello: bind ``identity`` to ``slot`` if it is that slot's process, once."""
        p = self.procs.get(slot)
        if p is None or p.pid != pid or p.identity is not None or identity in self.by_identity:
            return False
        p.identity = identity
        self.by_identity[identity] = slot
        return True

    def slot_of(self, identity: bytes) -> Slot | None:
        return self.by_identity.get(identity)

    def identity(self, slot: Slot) -> bytes | None:
        p = self.procs.get(slot)
        return None if p is None else p.identity

    def kill(self, slot: Slot) -> None:
        p = self.procs.get(slot)
        if p is not None and p.proc.is_alive():
            p.proc.kill()

    def reap_dead(self) -> list[tuple[Slot, int, int | None]]:
        """Join every process that has exited; returns (slot, pid, exit code) of each, and
        frees their slots."""
        out = []
        for slot, p in list(self.procs.items()):
            if not p.proc.is_alive():
                p.proc.join()
                out.append((slot, p.pid, p.proc.exitcode))
                self._forget(slot)
        return out

    def _forget(self, slot: Slot) -> None:
        p = self.procs.pop(slot)
        if p.identity is not None:
            self.by_identity.pop(p.identity, None)

    def alive(self) -> int:
        return sum(1 for p in self.procs.values() if p.proc.is_alive())

    def views(self, greeted: Collection[Slot]) -> tuple[WorkerView, ...]:
        """Every process, ``alive`` if its slot is in ``greeted`` (the machine's: it said
        hello), else ``starting``."""
        return tuple(WorkerView(s.role, s.id, p.pid, "alive" if s in greeted else "starting")
                     for s, p in sorted(self.procs.items()))

    def stop_all(self, timeout: float) -> None:
        """Join every process (after they were told to stop), killing any left at the end."""
        import time

        end = time.monotonic() + timeout
        for p in self.procs.values():
            p.proc.join(timeout=max(0.0, end - time.monotonic()))
        for p in self.procs.values():
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join()
        self.procs.clear()
        self.by_identity.clear()
