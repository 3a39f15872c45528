"""When a time-based policy's clock runs: on a timer, or only while the allocator is used.

Theory of operation
-------------------
A purge clock can be driven two ways, and the real allocators use both:

* ``"timer"`` (the default, sweeperd's behaviour before this option): the scavenger is a
  background thread that looks at every wake, used or not — jemalloc with
  ``background_thread:true``, TCMalloc's ``ProcessBackgroundActions``, Go's ``bgscavenge``.
* ``"activity"``: the allocator looks only when it is called.  jemalloc without a background
  thread (its default) ticks decay from its malloc and free paths (``arena_decay_ticks``), and
  its HPA does its deferred work from ``hpa_alloc``/``hpa_dalloc``; mimalloc checks its purge
  deadlines when its heap is next used (the idle-process complaint of mimalloc_rust#141).  An
  idle process therefore keeps its dirty memory however long its timers have run out, and the
  first allocation after the idle span catches up on all of it at once (jemalloc's epoch
  advances by the whole elapsed time).

:class:`Activity` is the one test: at a wake, has the heap been used since the last wake?  "Used"
is a change in either running total the scavenger reads in O(1) — bytes of objects allocated
(``View.allocated_bytes``, the mutators' ``T_BYTES_ALLOCATED``) or pages returned to the page
heap (``View.freed_pages``, ``T_FREED_PAGES``) — as both allocators tick on free as on malloc.
Invariants: in ``"timer"`` mode every wake is active; in ``"activity"`` mode the first look
is active (the allocator's initialisation starts its clocks) and a later one is active iff a
total moved since the previous look.  Not modelled: the allocators' tick counts (jemalloc
advances decay only every ``DECAY_NTICKS_PER_UPDATE`` = 1,000 calls), so a trickle of
allocation counts here as use.
"""

from __future__ import annotations

from sweeperd.pacing.policy import View

ON = ("timer", "activity")  # the ``on`` parameter of the time-based policies


def check_on(policy: str, on: str) -> str:
    """``on``, or a ValueError naming the policy and the choices."""
    if on not in ON:
        raise ValueError(f"{policy} policy: on = {on!r} is not one of {', '.join(ON)}")
    return on


class Activity:
    """Has the allocator been used since the last look (always, on a timer)?"""

    def __init__(self, policy: str, on: str) -> None:
        self.on = check_on(policy, on)
        self.seen: tuple[int, int] | None = None

    def active(self, v: View) -> bool:
        """True if the policy's clock runs at this wake (call once per wake)."""
        now = (v.allocated_bytes, v.freed_pages)
        first, moved = self.seen is None, now != self.seen
        self.seen = now
        return self.on == "timer" or first or moved
