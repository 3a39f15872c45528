"""Fail points: a real ``kill -9`` of this process at a named instruction boundary.

Theory of operation
-------------------
Crash safety is claimed for every instruction; fault tests check it at the boundaries that
matter (a scavenger between taking runs and releasing them, a mutator between its alloc bits
and its allocCount, ...).  Code marks such a boundary with ``failpoint.hit("scavenge.taken")``.
Nothing happens unless the process was started with the fail point armed, through the
environment (so a daemon's workers, started by ``spawn``, inherit it):

``SWEEPERD_FAILPOINTS``
    comma-separated names to arm, e.g. ``scavenge.released,malloc.bits_set``; ``name:N``
    arms a point to fire N times (1 to 1000), e.g. ``scavenge.taken:5``;
``SWEEPERD_FAILPOINTS_DIR``
    a directory where each firing leaves a file named after its point (``name``, then
    ``name.2`` ... ``name.N``).  A point fires **once per file**: the process that creates the
    file (``O_CREAT | O_EXCL``, atomic) dies; the ones after the last (the replacement
    worker) go on.  Without the variable a point never fires.

Firing is ``SIGKILL`` to itself: no handler, no ``finally``, no flush — the death a pager
meets.  Unarmed, ``hit`` costs one set lookup; the points sit at batch granularity.  Two other
kinds of firing: :func:`stop` stops the process (``SIGSTOP`` to itself: a debugger, a cgroup
freeze, a hang), and :func:`fail` raises :class:`InjectedFailure` (an action the coordinator
cannot carry out: ``action.<Kind>`` for each kind of the cycle machine's actions).
"""

from __future__ import annotations

import os
import signal

NAMES = frozenset({
    "scavenge.taken",  # runs taken out of the allocator's reach, nothing released yet
    "scavenge.released",  # the kernel released them, the heap does not say so yet
    "malloc.bits_set",  # alloc bits written, allocCount not yet
    "mutator.cached",  # a mutator holds cached spans in the middle of a cycle
    "mheap.freed",  # an eager freer freed spans and has not taken their pages to release
    "mutator.locked",  # a mutator holds the heap lock: it stops itself (SIGSTOP: see stop)
    "shell.step",  # the coordinator's loop raises (an unexpected exception in the shell)
}) | frozenset(f"action.{kind}" for kind in (  # the coordinator cannot carry out an action
    "MeasureHeap", "MeasureLive", "MeasureSweep", "SendMark", "BeginSweep", "SendSweep",
    "SendResume", "SweepMissed", "EndCycle", "Kill", "Recover", "Restart"))


MAX_TIMES = 1000


def _armed() -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in os.environ.get("SWEEPERD_FAILPOINTS", "").split(","):
        if not item:
            continue
        name, sep, times = item.partition(":")
        if sep and not (times.isdigit() and 1 <= int(times) <= MAX_TIMES):
            raise ValueError(f"SWEEPERD_FAILPOINTS: {item!r}: the count after ':' must be "
                             f"1..{MAX_TIMES}")
        armed[name] = int(times) if sep else 1
    unknown = set(armed) - NAMES
    if unknown:
        raise ValueError(f"SWEEPERD_FAILPOINTS: unknown fail points {sorted(unknown)}; "
                         f"known: {sorted(NAMES)}")
    return armed if os.environ.get("SWEEPERD_FAILPOINTS_DIR") else {}


ARMED = _armed()


def hit(name: str) -> None:
    """Die here (SIGKILL) if ``name`` is armed and has not fired all its times in this
    directory yet."""
    assert name in NAMES, f"unknown fail point {name!r}"
    times = ARMED.get(name)
    if times is None:
        return
    d = os.environ["SWEEPERD_FAILPOINTS_DIR"]
    for k in range(1, times + 1):
        path = os.path.join(d, name if k == 1 else f"{name}.{k}")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            continue  # fired already: the next firing, or the replacement goes on
        os.kill(os.getpid(), signal.SIGKILL)


class InjectedFailure(RuntimeError):
    """What an armed ``action.*`` fail point raises in place of the action it guards."""


def _fires(name: str) -> bool:
    """Armed and not fired yet in the directory: the file is made, holding this pid."""
    if name not in ARMED:
        return False
    path = os.path.join(os.environ["SWEEPERD_FAILPOINTS_DIR"], name)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    return True


def stop(name: str) -> None:
    """Stop here (SIGSTOP to itself) if ``name`` is armed and its file is absent; a test that
    removes the file arms it again for the next process to pass."""
    assert name in NAMES, f"unknown fail point {name!r}"
    if _fires(name):
        os.kill(os.getpid(), signal.SIGSTOP)


def fail(name: str) -> None:
    """Raise :class:`InjectedFailure` here if ``name`` is armed and has not fired yet.
    ``name`` need not be known (the coordinator asks for every action it carries out, and
    only ``action.<Kind>`` names can be armed)."""
    if _fires(name):
        raise InjectedFailure(f"fail point {name}")
