"""A live daemon per scavenger policy: it runs it, says so, releases (or not) as it should, and
its books agree with the kernel."""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pytest

from sweeperd.pacing.names import POLICIES
from sweeperd.runtime.heap import PAGE_FREE, Heap, HeapHandle
from sweeperd.runtime.sizeclasses import PAGE_SIZE

from .daemon import Daemon
from .test_daemon_memory import _bracketed, _kernel_backed, _mincore

# faster than the defaults where a default would outlast the test; every other key default
CONFIG = """
[heap]
size_mib = 64
[scavenger.jemalloc-decay]
dirty_decay_ms = 2000
[scavenger.tcmalloc-background]
release_rate_bytes_s = 16777216
"""
# (tcmalloc-background: TCMalloc's default rate is 0, no release at all; 16 MiB/s here)

# gperftools-rate's next look after one that found nothing waits 2^18 freed pages (2 GiB):
# at the default classes a minute or two of a loaded machine's frees.  Its mutators allocate
# the largest classes (18 KiB in 9-page spans, 32 KiB one to a 4-page span), so the pages
# come back to the page heap far faster; the policy and what is asserted of it are the same.
MORE = {"gperftools-rate": "[mutators]\nsize_classes = [60, 67]\n"}

# hugepage-aware releases only whole free huge pages (2 MiB), and only above Go's retain goal.
# Under the default mutators nothing sets the live heap: objects dying a cycle after their
# birth leave live at each mark what the cycle allocated, a random walk that may wander up to
# half the heap, where the retain goal passes the heap and nothing may go (seen in CI: 3 GiB
# freed, no release).  A spike sets it: 24 MiB live dropped to 2 MiB frees whole huge pages
# and brings the goal down to Go's minimum, the shape this policy is for.
HUGEPAGE_SPIKE = """
[scenario]
name = "hugepage-spike"
[[phase]]
seconds = 3
live_mib = [0, 24]
garbage_mib_s = 16
[[phase]]
seconds = 600
live_mib = 2
garbage_mib_s = 4
"""


def _config(tmp_path, policy: str) -> str:
    if policy != "hugepage-aware":
        return CONFIG + MORE.get(policy, "")
    scenario = tmp_path / "spike.toml"
    scenario.write_text(HUGEPAGE_SPIKE)
    return CONFIG + f'[mutators]\nscenario = "{scenario}"\n'


def _books_match_the_kernel(handle: dict) -> tuple[int, int]:
    """Under the heap lock (no release in flight): no page the books call released holds
    memory (mincore, the kernel's own view), and the arena's backing is at most what the books
    leave backed.  Returns (released pages by the books, kernel-backed bytes)."""
    with Heap.attach(HeapHandle.from_dict(handle)) as heap, heap.lock:
        released = np.flatnonzero((heap.scavenged != 0) & (heap.page_span == PAGE_FREE))
        resident = _mincore(heap.arena.ctypes.data, heap.heap_bytes).reshape(
            heap.npages, PAGE_SIZE // 4096)
        assert not resident[released].any(), "a page the books call released is resident"
        backed = heap.arena_backed_bytes()
        assert backed <= (heap.npages - released.size) * PAGE_SIZE
        return int(released.size), backed


def _wait_for_a_release(d: Daemon) -> dict:
    """The first release, however long the policy's own pacing makes it on this machine.

    gperftools-rate waits 2^18 freed pages (2 GiB: kDefaultReleaseDelay) after a look that
    found nothing to release — which a loaded machine makes likely (the freed run was reused
    before the niced scavenger looked) and slow (the frees come slower too).  So the deadline
    is in frees, not seconds: fail when 3 GiB were freed with no release (more than any
    policy waits), or when nothing at all was freed for 120 s (the daemon is stuck)."""
    freed, progress = -1, time.monotonic()
    while True:
        st = d.status()
        sc = st["scavenger"]
        if st["cycle"] >= 5 and sc["released_bytes_total"] > 0:
            return st
        if sc["freed_bytes_total"] > freed:
            freed, progress = sc["freed_bytes_total"], time.monotonic()
        assert freed < 3 << 30, f"3 GiB freed and no release: {sc}"
        assert time.monotonic() - progress < 120, f"nothing freed for 120 s: {st}"
        time.sleep(0.1)


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_runs_in_the_daemon_and_its_books_match_the_kernel(tmp_path, policy):
    cfg = tmp_path / "p.toml"
    cfg.write_text(_config(tmp_path, policy))
    d = Daemon("--config", str(cfg), "--policy", policy)
    try:
        if policy == "none":
            st = d.wait_for(lambda s: s["cycle"] >= 20, what="20 cycles")
        else:
            st = _wait_for_a_release(d)
        sc = st["scavenger"]
        assert sc["policy"] == policy
        body = urllib.request.urlopen(d.metrics, timeout=10).read().decode()
        assert f'sweeperd_scavenge_policy_info{{policy="{policy}"}} 1.0' in body
        _books_match_the_kernel(st["heap_handle"])
        _bracketed(lambda: _kernel_backed(st["heap_handle"]),
                   lambda: d.status()["memory"]["heap_backed_bytes"])
        if policy == "none":
            assert sc["released_bytes_total"] == 0 and sc["advised_bytes_total"] == 0
            assert not any(sc["madvise_calls_total"].values())
        else:
            assert sc["released_bytes_total"] > 0
            assert re.search(r"sweeperd_scavenge_released_bytes_total [1-9]", body)
        if policy == "eager":  # the freers released it, the scavenger nothing
            assert sc["released_on_free_bytes_total"] == sc["released_bytes_total"]
            assert sc["released_on_free_cpu_seconds_total"] > 0  # and their CPU is counted
            assert re.search(r"sweeperd_scavenge_released_on_free_cpu_seconds_total [0-9.e-]*[1-9]",
                             body)
        assert sum(st["deaths"].values()) == 0
        assert d.stop() == 0
    finally:
        d.close()
