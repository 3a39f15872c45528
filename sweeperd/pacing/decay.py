"""The ``jemalloc-decay`` policy: dirty pages decay on jemalloc's smootherstep curve.

Theory of operation (after jemalloc 5's src/decay.c and include/jemalloc/internal/smoothstep.h)
--------------------------------------------------------------------------------------------
Time is cut into epochs of ``dirty_decay_ms / 200`` (``SMOOTHSTEP_NSTEPS`` = 200; jemalloc's
default ``dirty_decay_ms`` is 10,000, so an epoch is 50 ms).  A backlog of 200 slots records
how many pages became dirty in each of the last 200 epochs: at each epoch boundary the
backlog shifts by the number of epochs that passed and its newest slot gets
``max(0, dirty now − nunpurged)``.  The pages allowed to stay dirty are

    npages_limit = Σ backlog[i] · h[i]  >> 24

where ``h[i]`` is smootherstep, ``6x⁵ − 15x⁴ + 10x³`` at ``x = (i + 1) / 200``, in 24-bit fixed
point rounded down (``SMOOTHSTEP_BFP`` = 24): pages dirtied in the newest epoch may all stay
(h = 1), pages dirtied 200 epochs ago may not (their slot has shifted out).  Then
``nunpurged = max(npages_limit, dirty now)``, and everything above the limit is purged
(jemalloc's background thread purges on each epoch advance, and only then).  Here "dirty" is
the page heap's free pages not released since last used (free and unscavenged, from the
heap's counters), and the excess is released from the top of the heap down like every other
policy's.

``dirty_decay_ms`` as jemalloc takes it: 0 purges at once (the freers release what they free,
as ``eager``: ``policies.releases_on_free``; the scavenger idles), -1 never purges (as
``none``).  ``on``: ``"timer"`` (the default) is jemalloc with ``background_thread:true``, its
epochs advanced on time; ``"activity"`` is jemalloc's default, no background thread: the epoch
advances and the purge runs only at a wake where the allocator was used (``activity.py``), so
an idle process keeps its dirty pages however long, and the first use after an idle span
advances every epoch that passed at once (more than 200: the backlog is cleared and every
dirty page goes).

Not modelled: jemalloc's random jitter of each epoch's deadline (it spreads many arenas'
purges; there is one page heap here) and the muzzy stage (``MADV_FREE`` pages that decay
again before ``MADV_DONTNEED``; here a release is one step).

Held against the real jemalloc (issue 20: ``c-jemalloc``, Debian 12's jemalloc 5.3.0 at its
defaults, the same scenario; 2026-12-01, one run): on ``spike-then-idle`` the lab's free-page
share was 0.71x jemalloc's ∫(RSS − live)dt but its end backing 0.12x (32 vs 277 MiB).  jemalloc
purged about half of the drop at once and then held ~265 MiB through the 26 s idle (2 MiB/s of
churn): without ``background_thread`` (its default) decay advances only when an arena ticks
(``arena_decay_ticks``, from the arena's own paths: tcache fills and flushes, large
allocations), and small churn served from the thread caches rarely gets there.  The same run
with ``MALLOC_CONF=background_thread:true`` decayed to 23 MiB 8 s after the drop — the 10 s
smootherstep this policy models (``on = "timer"``).  ``on = "activity"`` counts any use of the
heap as a tick (there is no thread cache in front of sweeperd's page heap), so with churn it
behaves as the timer; an idle heap keeps its pages in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from sweeperd.pacing.activity import Activity
from sweeperd.pacing.policy import IDLE_S, PageTable, Plan, View

SMOOTHSTEP_NSTEPS = 200
SMOOTHSTEP_BFP = 24


def smootherstep_table(nsteps: int = SMOOTHSTEP_NSTEPS, bfp: int = SMOOTHSTEP_BFP) -> list[int]:
    """jemalloc's ``h_steps``: smootherstep at (i+1)/nsteps, in ``bfp``-bit fixed point,
    rounded down (computed exactly, in rationals)."""
    out = []
    for i in range(1, nsteps + 1):
        x = Fraction(i, nsteps)
        h = 6 * x**5 - 15 * x**4 + 10 * x**3
        out.append(int(h * (1 << bfp)))  # int() of a positive Fraction rounds down
    return out


H_STEPS = smootherstep_table()


@dataclass(frozen=True)
class DecayParams:
    dirty_decay_ms: int = 10_000  # jemalloc's default (opt.dirty_decay_ms); 0 at once, -1 never
    on: str = "timer"  # "timer" (background_thread) or "activity" (activity.py)


class DecayPolicy:
    name = "jemalloc-decay"
    paced = False

    def __init__(self, params: DecayParams | None = None) -> None:
        self.params = params or DecayParams()
        if self.params.dirty_decay_ms < -1:
            raise ValueError(f"jemalloc-decay policy: dirty_decay_ms = "
                             f"{self.params.dirty_decay_ms}: allowed -1 (never), 0 (at once) "
                             "or more")
        self.activity = Activity(self.name, self.params.on)
        self.interval = max(0, self.params.dirty_decay_ms) / 1000 / SMOOTHSTEP_NSTEPS  # epoch, s
        self.epoch: float | None = None  # start of the current epoch
        self.backlog = [0] * SMOOTHSTEP_NSTEPS
        self.nunpurged = 0
        self.limit = 0
        self.purging = False  # an epoch passed and the dirty pages are not down to the limit

    def npages_limit(self) -> int:
        return sum(b * h for b, h in zip(self.backlog, H_STEPS, strict=True)) >> SMOOTHSTEP_BFP

    def advance(self, now: float, dirty: int) -> bool:
        """jemalloc's decay_maybe_advance_epoch: True if an epoch boundary was passed."""
        if self.epoch is None:
            self.epoch = now
            return False
        nadvance = int((now - self.epoch) / self.interval)
        if nadvance <= 0:
            return False
        self.epoch += nadvance * self.interval
        if nadvance >= SMOOTHSTEP_NSTEPS:
            self.backlog = [0] * SMOOTHSTEP_NSTEPS
        else:
            self.backlog = self.backlog[nadvance:] + [0] * nadvance
        self.backlog[-1] = max(0, dirty - self.nunpurged)
        self.limit = self.npages_limit()
        self.nunpurged = max(self.limit, dirty)
        return True

    def plan(self, v: View, pages: PageTable) -> Plan:
        """Purge down to the limit when an epoch has passed (and until it is reached, if a
        wake ends first); between epochs, nothing.  At 0 (the freers release) and -1 (never),
        nothing; in activity mode, nothing at a wake without use unless a purge is under way."""
        if self.params.dirty_decay_ms <= 0:
            return Plan(0, sleep_s=IDLE_S)
        if not self.activity.active(v) and not self.purging:
            return Plan(0, sleep_s=IDLE_S)
        if self.advance(v.now, v.dirty_pages):
            self.purging = True
        excess = max(0, v.dirty_pages - self.limit) if self.purging else 0
        self.purging = excess > 0
        assert self.epoch is not None
        return Plan(excess, sleep_s=max(0.0, self.epoch + self.interval - v.now))

    def released(self, pages: int, v: View) -> None:
        pass

    def figures(self) -> dict[str, float]:
        return {"decay_npages_limit": self.limit}
