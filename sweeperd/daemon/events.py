"""The cycle machine's vocabulary: worker slots, the events it takes and the actions it returns.

Plain frozen values, so the machine (cycle.py) stays pure and a test can build any sequence of
them.  An event's ``now`` is the shell's monotonic clock; the machine keeps no clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sweeperd.roles import Role

__all__ = ["Role"]  # (re-exported: the machine's vocabulary names it)


class Slot(NamedTuple):
    """A worker's place: its role and its id within the role (stable across restarts)."""

    role: Role
    id: int

    def __str__(self) -> str:
        return f"{self.role} {self.id}"


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class Started:
    slot: Slot
    now: float


@dataclass(frozen=True)
class Hello:
    slot: Slot
    now: float


@dataclass(frozen=True)
class Heard:
    slot: Slot
    now: float
    stats_of: Role | None = None  # whose figures its heartbeat carried (None: a beat alone)


@dataclass(frozen=True)
class Marked:
    slot: Slot
    cycle: int
    now: float
    marked_bytes: int = 0  # bytes of the objects this mutator marked


@dataclass(frozen=True)
class Swept:
    slot: Slot
    cycle: int
    now: float


@dataclass(frozen=True)
class Died:
    slot: Slot
    memory: bool = False  # killed by the OOM killer or SIGBUS: the host had no memory for it


@dataclass(frozen=True)
class GcRequested:
    pass


@dataclass(frozen=True)
class Stopping:
    pass


@dataclass(frozen=True)
class ActionFailed:
    """The shell could not carry out an action the machine returned: the machine goes BROKEN."""

    action: str  # the action's kind, e.g. "BeginSweep"
    cause: str  # what failed, e.g. "OSError: [Errno 22] Invalid argument"


@dataclass(frozen=True)
class HeapMeasured:
    objects_bytes: int
    headroom_bytes: int  # free + released
    heap_bytes: int


@dataclass(frozen=True)
class LiveMeasured:
    live_bytes: int
    in_use_pages: int


@dataclass(frozen=True)
class SweepMeasured:
    remaining_pages: int  # not yet handed out of any shard
    in_flight: bool  # a chunk taken and not released
    unfinished: int  # spans claimed (h-1)
    missed: int  # spans still unswept (h-2)


Event = (Tick | Started | Hello | Heard | Marked | Swept | Died | GcRequested | Stopping
         | ActionFailed | HeapMeasured | LiveMeasured | SweepMeasured)

# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasureHeap:
    pass


@dataclass(frozen=True)
class MeasureLive:
    reported_bytes: int = 0  # the marked bytes the mutators reported, summed


@dataclass(frozen=True)
class MeasureSweep:
    pass


@dataclass(frozen=True)
class SendMark:
    slots: tuple[Slot, ...]
    cycle: int  # the sweepgen the mark is for
    forced: bool = False  # a client asked for this cycle (``gc``)


@dataclass(frozen=True)
class BeginSweep:
    sweepgen: int  # the heap's new sweepgen (old + 2)
    nshards: int
    goal_bytes: int
    trigger_bytes: int


@dataclass(frozen=True)
class SendSweep:
    slots: tuple[Slot, ...]
    cycle: int


@dataclass(frozen=True)
class SendResume:
    slots: tuple[Slot, ...]
    cycle: int
    sweep_pages_per_byte: float


@dataclass(frozen=True)
class SweepMissed:
    pass


@dataclass(frozen=True)
class EndCycle:
    cycles: int  # completed cycles, this one included
    sweep_seconds: float


@dataclass(frozen=True)
class Kill:
    slot: Slot
    silent_s: float


@dataclass(frozen=True)
class Recover:
    slot: Slot


@dataclass(frozen=True)
class Restart:
    slot: Slot


@dataclass(frozen=True)
class GiveUp:
    """Too many deaths of one role: stop the daemon and let the service manager decide."""

    role: Role
    deaths: int
    window_s: float
    memory: bool = False  # the deaths were of memory (OOM killer, SIGBUS): exit 6, not 4


Action = (MeasureHeap | MeasureLive | MeasureSweep | SendMark | BeginSweep | SendSweep
          | SendResume | SweepMissed | EndCycle | Kill | Recover | Restart | GiveUp)

MEASUREMENT_OF = {MeasureHeap: HeapMeasured, MeasureLive: LiveMeasured,
                  MeasureSweep: SweepMeasured}
