"""Named, loud failures.

The Go runtime calls ``throw`` when an invariant of the heap breaks: the process dies with a
message naming the broken invariant.  Here each such invariant has its own exception class
(all subclasses of :class:`Throw`) whose message starts with Go's own wording, so a failure
reads the same as it would in the runtime and tests can assert on the exact kind.
"""

from __future__ import annotations


class Throw(RuntimeError):
    """A heap invariant is broken: the shared state is corrupt or a caller misused it."""

    go_message = "fatal error"

    def __init__(self, detail: str = "") -> None:
        msg = self.go_message if not detail else f"{self.go_message}: {detail}"
        super().__init__(msg)


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
