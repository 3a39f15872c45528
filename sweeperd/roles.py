"""The worker roles: one spelling of the set, on the ground floor.

A worker process is a ``sweeper`` (background sweeping), a ``mutator`` (the workload: allocate,
mark, sweep on demand) or the ``scavenger`` (returns free pages to the OS).  The wire
(``HelloMsg.role``), the link, the workers, the cycle machine's slots, the counters, the
snapshot and the metrics' ``role`` label all use :class:`Role`; its values are the strings the
protocol and the metrics have always carried, so nothing outside changes.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    SWEEPER = "sweeper"
    MUTATOR = "mutator"
    SCAVENGER = "scavenger"
