"""The load test's arithmetic (quantiles, integrals, the retain-goal clock, books against the
kernel) and its kernel readers, against known answers and the real /proc."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeperd.loadtest import sampler, summary
from sweeperd.loadtest.sampler import books_error, columns, excess_split
from sweeperd.sys.shm import SharedRegion
from sweeperd.workload.mutator import ALLOC_BUCKETS
from sweeperd.workload.scenario import parse

MIB = 1 << 20
SC = parse("""
[scenario]
name = "t"
heap_mib = 256
[[phase]]
seconds = 4
live_mib = 100
[[phase]]
seconds = 6
live_mib = 10
""")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=0.9), min_size=1, max_size=500),
       st.sampled_from([0.5, 0.9, 0.99]))
def test_quantile_falls_in_the_bucket_of_the_true_quantile(obs: list[float], q: float) -> None:
    counts = [sum(1 for x in obs if x <= b) for b in ALLOC_BUCKETS] + [len(obs)]
    got = summary.quantile(q, counts)
    assert got is not None
    true = float(np.quantile(obs, q, method="inverted_cdf"))
    i = int(np.searchsorted(ALLOC_BUCKETS, true))  # the bucket holding the true quantile
    lo = ALLOC_BUCKETS[i - 1] if i > 0 else 0.0
    assert lo - 1e-12 <= got <= ALLOC_BUCKETS[i] + 1e-12


def test_quantile_of_nothing_and_of_the_overflow_bucket() -> None:
    n = len(ALLOC_BUCKETS)
    assert summary.quantile(0.5, [0] * (n + 1)) is None
    assert summary.quantile(0.5, [0] * n + [10]) == ALLOC_BUCKETS[-1]


def test_integral_and_the_retain_goal_clock() -> None:
    assert summary.integral([0, 1, 3], [0, 2, 2]) == pytest.approx(1 + 4)
    ts = [0, 2, 4, 6, 8, 10]
    goals = [50, 50, 20, 20, 20, 20]
    assert summary.seconds_to_goal(ts, [90, 90, 90, 30, 15, 15], goals, 4.0) == 4.0
    assert summary.seconds_to_goal(ts, [90] * 6, goals, 4.0) is None
    assert summary.settle_from(SC) == 4.0


def _rows(backed: list[float], live: float = 10 * MIB) -> list[dict[str, float]]:
    rows = []
    for i, b in enumerate(backed):
        r = dict.fromkeys(columns(), 0.0)
        r.update(scenario_elapsed_s=float(i), kernel_backed_bytes=b, live_bytes=live,
                 retain_goal_bytes=22 * MIB, released_bytes=i * 100 * MIB,
                 cpu_scavenger_s=0.1 * i, madvise_calls=3.0 * i, gc_cycles=float(i),
                 books_vs_kernel=0.001 * i)
        rows.append(r)
    return rows


def test_summarize_figures() -> None:
    rows = _rows([100 * MIB] * 5 + [20 * MIB] * 6)
    s = summary.summarize(SC, "go", rows, ok=True)
    assert s["peak_backed_bytes"] == 100 * MIB
    assert s["mean_backed_bytes"] == pytest.approx((4.5 * 100 + 5.5 * 20) / 10 * MIB, rel=1e-6)
    assert s["excess_byte_seconds"] == pytest.approx((4.5 * 90 + 5.5 * 10) * MIB, rel=1e-6)
    assert s["seconds_to_retain_goal"] == 1.0  # 20 MiB <= 22 MiB from t = 5, drop at 4
    assert s["released_bytes"] == 1000 * MIB and s["madvise_calls"] == 30
    assert s["cpu_seconds_per_gib_released"] == pytest.approx(1.0 / (1000 / 1024))
    assert s["gc_cycles"] == 10 and s["max_books_vs_kernel_error"] == pytest.approx(0.01)
    assert s["alloc_latency_p50_seconds"] is None  # no refills observed
    nothing = summary.summarize(SC, "none", _rows([100 * MIB] * 11), ok=True)
    assert nothing["seconds_to_retain_goal"] is None
    empty = summary.summarize(SC, "x", [], ok=False)
    assert empty["ok"] is False and empty["peak_backed_bytes"] is None


BYTES = st.integers(min_value=0, max_value=1 << 44)  # up to 16 TiB, exact in a float


@settings(max_examples=500, deadline=None)
@given(BYTES, BYTES, BYTES, BYTES)
def test_excess_split_adds_up_to_the_excess_exactly(kernel: int, live: int, objects: int,
                                                    unused: int) -> None:
    """Any books against any kernel figure: the three parts sum to kernel − live exactly,
    garbage and fragmentation are never negative nor above the books' figure, and free-backed
    is negative only when the kernel holds less than the live heap (then it is all there)."""
    g, f, u = excess_split(float(kernel), float(live), float(objects), float(unused))
    assert g + f + u == kernel - live
    assert 0 <= g <= max(0, objects - live) and 0 <= u <= unused
    if f < 0:
        assert kernel < live and g == 0 and u == 0 and f == kernel - live
    if kernel >= live + max(0, objects - live) + unused:  # the kernel covers the books
        assert g == max(0, objects - live) and u == unused


def test_excess_split_attributes_the_kernel_difference_as_documented() -> None:
    # books and kernel agree: 100 live, 50 garbage, 10 unused, 40 free pages backed
    assert excess_split(200 * MIB, 100 * MIB, 150 * MIB, 10 * MIB) == (50 * MIB, 40 * MIB,
                                                                       10 * MIB)
    # a release in flight the kernel already dropped: simply not in free-backed
    assert excess_split(170 * MIB, 100 * MIB, 150 * MIB, 10 * MIB) == (50 * MIB, 10 * MIB,
                                                                       10 * MIB)
    # a fresh span's 8 MiB not yet written: out of fragmentation first
    assert excess_split(152 * MIB, 100 * MIB, 150 * MIB, 10 * MIB) == (50 * MIB, 0.0, 2 * MIB)
    # then out of garbage (Go: a large object's inside, never written)
    assert excess_split(130 * MIB, 100 * MIB, 150 * MIB, 10 * MIB) == (30 * MIB, 0.0, 0.0)
    # the kernel below the live heap: the (negative) excess stays in free-backed
    assert excess_split(90 * MIB, 100 * MIB, 150 * MIB, 10 * MIB) == (0.0, -10 * MIB, 0.0)
    # objects below the marked live heap (a scrape between a mark and its figure): no garbage
    assert excess_split(120 * MIB, 100 * MIB, 95 * MIB, 5 * MIB) == (0.0, 15 * MIB, 5 * MIB)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.001, max_value=2.0), BYTES, BYTES, BYTES,
                          BYTES), min_size=1, max_size=60))
def test_the_split_byte_seconds_add_up_to_excess_byte_seconds(
        samples: list[tuple[float, int, int, int, int]]) -> None:
    """Rows as the sampler makes them (split_columns): the three excess_*_byte_seconds of
    summarize add up to its excess_byte_seconds, to float rounding."""
    rows, t = [], 0.0
    for dt, kernel, live, objects, unused in samples:
        t += dt
        r = dict.fromkeys(columns(), 0.0)
        r.update(scenario_elapsed_s=t, kernel_backed_bytes=float(kernel), live_bytes=float(live),
                 objects_bytes=float(objects), unused_bytes=float(unused))
        r.update(sampler.split_columns(r))
        rows.append(r)
    s = summary.summarize(SC, "go", rows, ok=True)
    parts = (s["excess_garbage_byte_seconds"] + s["excess_free_byte_seconds"]
             + s["excess_fragmentation_byte_seconds"])
    scale = summary.integral([r["scenario_elapsed_s"] for r in rows],
                             [r["kernel_backed_bytes"] + r["live_bytes"] for r in rows])
    assert parts == pytest.approx(s["excess_byte_seconds"], rel=1e-12, abs=1e-12 * scale + 1e-9)


def test_summarize_splits_the_excess_by_what_holds_it() -> None:
    """A drop at 4 s: 90 MiB of garbage until a GC at 5 s, then free pages the scavenger
    releases by 7 s; 2 MiB of free slots throughout."""
    rows = []
    for i, (kernel, objects) in enumerate([(110, 100), (110, 100), (110, 100), (110, 100),
                                           (110, 100), (110, 100), (60, 8), (12, 8),
                                           (12, 8), (12, 8), (12, 8)]):
        r = dict.fromkeys(columns(), 0.0)
        r.update(scenario_elapsed_s=float(i), kernel_backed_bytes=kernel * MIB,
                 live_bytes=(100 if i < 5 else 8) * MIB, objects_bytes=objects * MIB,
                 unused_bytes=2 * MIB, retain_goal_bytes=20 * MIB)
        r.update(sampler.split_columns(r))
        rows.append(r)
    s = summary.summarize(SC, "go", rows, ok=True)
    # garbage: 0 to 4 s (live = objects), 92 MiB at 5 s, 0 after 6 s
    assert s["excess_garbage_byte_seconds"] == pytest.approx(92 * MIB)
    assert s["excess_fragmentation_byte_seconds"] == pytest.approx(20 * MIB)
    # free: 8 MiB to 5 s (at 5: kernel 110 = live 8 + garbage 92 + 2 + 8), 50 at 6, 2 after
    assert s["excess_free_byte_seconds"] == pytest.approx((32 + 8 + 29 + 26 + 3 * 2) * MIB)
    assert (s["excess_garbage_byte_seconds"] + s["excess_free_byte_seconds"]
            + s["excess_fragmentation_byte_seconds"]) == pytest.approx(s["excess_byte_seconds"])
    assert summary.summarize(SC, "x", [], ok=False)["excess_free_byte_seconds"] is None


def test_the_go_row_maps_runtime_metrics_to_the_split() -> None:
    """A runtime/metrics line as goref prints it: Go's heap classes go to the daemon's
    columns, /gc/heap/live (Go 1.21+) is the live heap over gctrace's, and the split is
    taken against the kernel's figure read for the process (here this one's, whatever it
    is: the three still add up to it less the live heap)."""
    from sweeperd.loadtest.goref import _row

    m = {"t": 3.0, "/gc/heap/goal:bytes": 200.0 * MIB, "/gc/heap/live:bytes": 90.0 * MIB,
         "/memory/classes/heap/objects:bytes": 150.0 * MIB,
         "/memory/classes/heap/unused:bytes": 6.0 * MIB,
         "/memory/classes/heap/free:bytes": 20.0 * MIB,
         "/memory/classes/heap/released:bytes": 30.0 * MIB}
    row = _row(m, 77.0 * MIB, os.getpid())
    assert row["live_bytes"] == 90 * MIB and row["unused_bytes"] == 6 * MIB
    assert row["objects_bytes"] == 150 * MIB and row["free_bytes"] == 20 * MIB
    assert row["heap_size_bytes"] == 206 * MIB and row["books_backed_bytes"] == 176 * MIB
    parts = row["garbage_bytes"] + row["free_backed_bytes"] + row["fragmentation_bytes"]
    assert parts == row["kernel_backed_bytes"] - row["live_bytes"]
    del m["/gc/heap/live:bytes"]  # Go 1.19: gctrace's live heap
    assert _row(m, 77.0 * MIB, os.getpid())["live_bytes"] == 77 * MIB


def test_books_error_is_the_gap_between_the_intervals() -> None:
    assert books_error(90 * MIB, 100 * MIB, 95 * MIB, 96 * MIB) == 0  # overlap
    assert books_error(100 * MIB, 100 * MIB, 98 * MIB, 99 * MIB) == pytest.approx(1 / 99)
    assert books_error(1 * MIB, 1 * MIB, 0, 0) == pytest.approx(1 / 32)  # the floor
    assert books_error(50 * MIB, 60 * MIB, 70 * MIB, 64 * MIB) == pytest.approx(4 / 70)


def test_kernel_readers_find_a_real_memfd_and_read_real_proc() -> None:
    r = SharedRegion.create("sweeperd-arena", 4 * MIB)
    try:
        path = sampler.arena_fd(os.getpid())
        assert os.stat(path).st_blocks == 0
        assert r.mmap is not None
        r.mmap[: 2 * MIB] = b"x" * (2 * MIB)
        assert os.stat(path).st_blocks * 512 == 2 * MIB
    finally:
        r.close()
    with pytest.raises(FileNotFoundError):
        sampler.arena_fd(os.getpid())
    assert sampler.pss_bytes(os.getpid()) > 0
    assert sampler.cpu_seconds(os.getpid()) > 0
    assert sampler.shmem_bytes() >= 0


def test_go_heap_rss_counts_arena_mappings_once_when_smaps_repeats_one(tmp_path) -> None:
    """A fake /proc root (the seam): a grown mapping read again must not count twice."""
    from sweeperd.loadtest.goref import go_heap_rss

    d = tmp_path / "7"
    d.mkdir()
    d.joinpath("smaps").write_text(
        "00400000-004c5000 r-xp 00000000 08:01 1 /goref\nRss:  788 kB\n"
        "c000000000-c000400000 rw-p 00000000 00:00 0\nRss:  1024 kB\nVmFlags: rd wr\n"
        "c000400000-c004400000 rw-p 00000000 00:00 0\nRss:  40000 kB\n"
        # the read went on after the mapping grew: it comes again, larger
        "c000400000-c008400000 rw-p 00000000 00:00 0\nRss:  50000 kB\n"
        "7fd54cf11000-7fd54d2fe000 rw-p 00000000 00:00 0\nRss:  2836 kB\n")
    assert go_heap_rss(7, proc=str(tmp_path)) == (1024 + 50000) * 1024


def test_alloc_figures_are_the_rate_and_the_share_of_what_the_schedule_asked() -> None:
    sc = parse('[scenario]\nname = "x"\nheap_mib = 512\n[[phase]]\nseconds = 10\n'
               'live_mib = 0\ngarbage_mib_s = 8\n')
    got = summary.alloc_figures(sc, 0.0, 10.0, 40 * 2**20)
    assert got == {"alloc_bytes_per_s": 4 * 2**20, "alloc_vs_schedule": 0.5}
    # a hold of 2 s inside the window: in the counters, so in the span and the asked bytes
    got = summary.alloc_figures(sc, 0.0, 8.0, 80 * 2**20, hold_s=2.0)
    assert got == {"alloc_bytes_per_s": 8 * 2**20, "alloc_vs_schedule": 1.0}
    assert summary.alloc_figures(sc, 3.0, 3.0, 0.0) == {"alloc_bytes_per_s": None,
                                                       "alloc_vs_schedule": None}
