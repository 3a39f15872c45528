"""Nothing a worker did is lost when it dies: the daemon's counters after kills equal what the
kernel saw (real daemons, real SIGKILLs at armed fail points or at random instants).

The scavenger's releases are counted in its row of the heap's tallies in an order that keeps
the books exact at every instruction (runtime/scavenge.py ``release``): here it is killed ten
times mid-release, five times between taking its runs and its madvise (``scavenge.taken``) and
five times between its madvise and its finish (``scavenge.released``), and the bytes the daemon
says it released must be exactly the bytes the arena's memfd lost.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request

from sweeperd.wire import protocol

from .daemon import Daemon

MIB = 1 << 20

# Fill to 48 MiB live (the retain goal, heap goal + 10%, stays above what is backed: nothing is
# released), then hold nothing and allocate nothing: from then on the arena's backing only
# falls, and only by releases.
SCENARIO = """\
[scenario]
name = "fill-then-idle"
heap_mib = 96

[[phase]]
name = "fill"
seconds = 2
live_mib = [0, 48]

# (a mutator that said hello late, on a loaded machine, still fills its share)
[[phase]]
name = "hold"
seconds = 3
live_mib = 48

[[phase]]
name = "idle"
seconds = 0.5
live_mib = 0
"""

POINTS = ("scavenge.taken", "scavenge.released")


def _metric(d: Daemon, name: str) -> float:
    with urllib.request.urlopen(d.metrics, timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape")


def _books(st: dict) -> int:
    return st["scavenger"]["released_bytes_total"]


def _quiet(d: Daemon) -> dict:
    """A status once two reads 0.5 s apart agree on the kernel's backing, the books and the
    free pages: nothing was released between them.  A status's books come from the snapshot
    of the coordinator's last step and its kernel figure from the moment it is answered, so
    a release under way between the two (the free pages it took are no longer free, the
    kernel has lost them, the books do not say so yet) shows in one and not the other."""
    prev = None
    while True:
        st = d.status()
        now = (st["memory"]["heap_backed_bytes"], _books(st), st["heap"]["free_bytes"])
        if now == prev:
            return st
        prev = now
        time.sleep(0.5)


def _scavenger_alive(st: dict) -> bool:
    return any(w["role"] == "scavenger" and w["state"] == "alive" for w in st["workers"])


def test_scavenger_killed_ten_times_mid_release_the_books_equal_the_kernel(tmp_path):
    (tmp_path / "idle.toml").write_text(SCENARIO)
    # a slow scavenger (its quanta stay small, so every kill finds pages left to release),
    # and no calibration at start; its replacements after at most 0.2 s (the default backoff
    # doubles to 5 s: ~21 s of waiting over ten deaths, which this test is not about)
    (tmp_path / "cfg.toml").write_text("[scavenger]\ncpu_fraction = 0.0005\nvectored = \"off\"\n"
                                       "[control]\nrestart_backoff_max_ms = 200\n")
    fp = tmp_path / "fp"
    fp.mkdir()
    # each point fires five times: each scavenger dies at its first release (a fresh one's
    # first quantum is small: the supply of free pages lasts), five at each point
    d = Daemon("--config", str(tmp_path / "cfg.toml"), "--scenario", str(tmp_path / "idle.toml"),
               "--sweepers", "1", "--mutators", "2", "--debug-checks",
               env={"SWEEPERD_FAILPOINTS": ",".join(f"{p}:5" for p in POINTS),
                    "SWEEPERD_FAILPOINTS_DIR": str(fp)})
    try:
        st = d.wait_for(lambda s: s["scenario"].get("phase") == 2
                        and s["scenario"]["elapsed_s"] > 6 and _scavenger_alive(s),
                        timeout=180, what="the scenario to reach its idle end")
        # quiet: no allocation, and nothing releasable under the retain goal of the fill
        st = _quiet(d)
        backed0, books0 = st["memory"]["heap_backed_bytes"], _books(st)
        assert backed0 > 24 * MIB, "the fill did not back the arena"
        c0 = st["cycle"]
        for _ in range(2):  # the live heap is 0: the heap goal falls to its minimum
            d.request(protocol.encode("gc"))
        d.wait_for(lambda s: s["cycle"] >= c0 + 2, timeout=120, what="two forced cycles")

        d.wait_for(lambda s: s["deaths"]["scavenger"] >= 10 and _scavenger_alive(s),
                   timeout=300, what="ten kills mid-release and a scavenger back")
        assert sorted(p.name for p in fp.iterdir()) == sorted(
            f"{p}{'' if k == 1 else f'.{k}'}" for p in POINTS for k in range(1, 6))

        d.request(protocol.encode("scavenge"))  # the rest, now, by the scavenger
        d.wait_for(lambda s: s["heap"]["free_bytes"] == 0, timeout=180,
                   what="every free page released")
        st = _quiet(d)  # (free 0 while the last release may still be in flight)
        released = backed0 - st["memory"]["heap_backed_bytes"]  # what the kernel lost
        assert released > 16 * MIB
        assert _books(st) - books0 == released
        assert _metric(d, "sweeperd_scavenge_released_bytes_total") == _books(st)
        # (on a loaded machine a worker may also be killed as silent: the books stay exact)
        assert st["deaths"]["scavenger"] >= 10
        assert st["debug"]["conservation_gap"] == 0
        assert d.stop() == 0
    finally:
        d.close()


def test_conservation_returns_to_zero_after_sweepers_and_mutators_are_killed():
    """SIGKILLs of sweepers and mutators at whatever instant they are at: what they had
    allocated and freed is in their rows of the tallies, so allocated = in the heap + freed
    holds again at the next sweep's start (the debug conservation check)."""
    d = Daemon("--heap-mib", "64", "--sweepers", "2", "--mutators", "2", "--debug-checks")
    try:
        killed = 0
        for i in range(8):
            st = d.wait_for(lambda s: s["workers_alive"] == 5 and s["cycle"] >= 1, timeout=120,
                            what="every worker alive")
            role = ("sweeper", "mutator")[i % 2]
            victims = [w for w in st["workers"] if w["role"] == role and w["state"] == "alive"]
            try:
                os.kill(victims[i % len(victims)]["pid"], signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
            c = st["cycle"]
            d.wait_for(lambda s, c=c: s["cycle"] >= c + 1, timeout=120, what="a cycle")
        c = d.status()["cycle"]
        st = d.wait_for(lambda s: s["cycle"] >= c + 2 and s["workers_alive"] == 5,
                        timeout=120, what="two more cycles with every worker back")
        assert killed >= 6 and sum(st["deaths"].values()) >= killed
        assert st["debug"]["conservation_checks"] > 0
        assert st["debug"]["conservation_gap"] == 0
        assert st["debug"]["exactly_once_violations"] == 0
        assert st["mutators"]["lost_objects"] == 0
        assert d.stop() == 0
    finally:
        d.close()
