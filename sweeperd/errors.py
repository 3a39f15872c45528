"""Named, loud failures.

The Go runtime calls ``throw`` when an invariant of the heap breaks: the process dies with a
message naming the broken invariant.  Here each such invariant has its own exception class
(all subclasses of :class:`Throw`) whose message starts with Go's own wording, so a failure
reads the same as it would in the runtime and tests can assert on the exact kind.
"""

from __future__ import annotations

from enum import IntEnum


class Throw(RuntimeError):
    """A heap invariant is broken: the shared state is corrupt or a caller misused it."""

    go_message = "fatal error"

    def __init__(self, detail: str = "") -> None:
        msg = self.go_message if not detail else f"{self.go_message}: {detail}"
        super().__init__(msg)


class ThrownByWorker(Throw):
    """A worker process died of a :class:`Throw`: the message is its own (Go's wording
    first), with the worker named.  The workers are one runtime with the coordinator, as
    Go's threads are one program: a throw in any of them ends it."""

    def __init__(self, worker: str, message: str) -> None:
        RuntimeError.__init__(self, f"{message} (thrown by {worker})")


class SweepIncreasedAllocCount(Throw):
    go_message = "sweep increased allocation count"


class FoundPointerToFreeObject(Throw):
    go_message = "found pointer to free object"


class BadSpanState(Throw):
    go_message = "mspan.sweep: bad span state"


class OutOfMemory(Throw):
    go_message = "out of memory"


class HeapCorrupt(Throw):
    go_message = "heap corrupt"


class UnalignedSysUnused(Throw):
    go_message = "unaligned sysUnused"


class LockNotHeld(Throw):
    go_message = "lock not held"


class BadObjectIndex(Throw):
    go_message = "object index out of range for its span"


class AllocCountOverflow(Throw):
    go_message = "s.allocCount > s.nelems"


class BadFinalizerTarget(Throw):
    go_message = "runtime.SetFinalizer: pointer not at beginning of allocated block"


class ExitCode(IntEnum):
    """Why ``sweeperd run`` ended: one code per cause (README "Exit codes").

    A service manager restarts on some and not others (``RestartPreventExitStatus=`` in the
    systemd unit names the ones a restart cannot fix)."""

    OK = 0  # ran its duration, or drained on SIGTERM/SIGINT
    CANNOT_START = 1  # an address or resource the daemon needs at start is unavailable
    USAGE = 2  # a bad flag or config key, or a heap larger than the host can back
    HEAP_INVARIANT = 3  # a heap invariant broke (a named Throw); drained, then exit
    WORKERS_KEEP_DYING = 4  # one role died more than control.max_deaths times in the window
    CYCLE_BROKEN = 5  # the GC cycle machine went BROKEN: an action failed half-done
    OUT_OF_MEMORY = 6  # workers kept dying of memory (OOM killer, SIGBUS): the host said no
    UNSUPPORTED_PLATFORM = 7  # not Linux with memfd_create (check_platform names what is missing)
    INTERNAL = 8  # an unexpected exception in the coordinator's own shell (logged, drained)
