import json
import subprocess
import sys

import pytest

from sweeperd.pacing.names import POLICIES


def _sweeperd(*args):
    return subprocess.run([sys.executable, "-m", "sweeperd.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_bench_sweep_prints_its_json():
    r = _sweeperd("bench", "sweep", "--json", "--spans", "4096", "--live", "0.1",
                  "--rounds", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for k in ("spans", "size_class", "live_fraction", "workers", "seconds", "spans_per_s",
              "bitmap_bytes_per_s", "memcpy_bytes_per_s", "ratio_to_memcpy"):
        assert k in out, k
    assert out["spans"] == 4096 and out["size_class"] == 6 and out["live_fraction"] == 0.1
    # 10% of the objects live, first by address: the first ~410 spans stay, the rest go
    assert out["spans_freed"] == 4096 - 410
    assert out["spans_per_s"] > 0 and out["memcpy_bytes_per_s"] > 0
    assert out["ratio_to_memcpy"] == pytest.approx(
        out["bitmap_bytes_per_s"] / out["memcpy_bytes_per_s"])


@pytest.mark.parametrize("args,needle", [
    (["--live", "1.5"], "--live"),
    (["--spans", "0"], "--spans"),
    (["--size-class", "0"], "--size-class"),
    (["--spans", "4096", "--heap-mib", "1"], "--heap-mib"),
    (["--spans", "many"], "--spans"),
    (["--rounds", "0"], "--rounds"),
    (["--workers", "1,,2"], "--workers"),
    (["--spans", str(1 << 40)], "--spans"),  # 8 PiB: more than this host has available
])
def test_bad_flags_exit_2_naming_the_flag(args, needle):
    r = _sweeperd("bench", "sweep", *args)
    assert r.returncode == 2
    assert needle in r.stderr


def test_bench_sweep_with_worker_processes():
    r = _sweeperd("bench", "sweep", "--json", "--spans", "8192", "--workers", "1,2",
                  "--rounds", "2", "--live", "0.5", "--chunk-pages", "64")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [run["workers"] for run in out["runs"]] == [1, 2]
    assert out["chunk_pages"] == 64  # what was asked, not a floor of its own
    for run in out["runs"]:
        assert run["spans"] == 8192 and sum(run["spans_by_worker"]) == 8192
        assert run["spans_freed"] == 4096  # the second half of the objects is dead
    assert out["speedup"] == pytest.approx(
        out["runs"][1]["spans_per_s"] / out["runs"][0]["spans_per_s"])


@pytest.mark.parametrize("val", ["0", "1,x", "65", ""])
def test_bad_worker_counts_exit_2(val):
    r = _sweeperd("bench", "sweep", "--workers", val)
    assert r.returncode == 2 and "--workers" in r.stderr


def test_bench_alloc_prints_its_json():
    r = _sweeperd("bench", "alloc", "--json", "--seconds", "0.5", "--heap-mib", "64")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["objects"] > 0 and out["objects_per_s"] > 0 and out["gc_cycles"] >= 0
    assert out["arena_backed_bytes"] > 0  # payloads were really written
    assert _sweeperd("bench", "alloc", "--size-class", "67").returncode == 2


@pytest.mark.parametrize("args,needle", [
    (["run", "--policy", "tcmalloc"],
     "scavenger.policy: 'tcmalloc' is not one of eager, go, gperftools-rate, hugepage-aware, "
     "jemalloc-decay, jemalloc-hpa, mimalloc-delay, none, tcmalloc-background"),
    (["bench", "scavenge", "--policy", "tcmalloc"],
     "--policy 'tcmalloc' is not one of go, jemalloc-decay"),
])
def test_an_unknown_policy_exits_2_naming_the_key_and_the_choices(args, needle):
    r = _sweeperd(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr


@pytest.mark.parametrize("policy", POLICIES)
def test_bench_scavenge_runs_every_policy(policy):
    r = _sweeperd("bench", "scavenge", "--json", "--heap-mib", "32", "--live", "0.1",
                  "--policy", policy)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["policy"] == policy and out["released_bytes"] >= 0
    if policy in ("none", "tcmalloc-background"):  # (TCMalloc's default rate is 0: never)
        assert out["released_bytes"] == 0 and out["madvise_calls"] == 0
    elif policy != "hugepage-aware":  # 32 MiB of 64 B objects, 10% kept: free runs remain
        assert out["released_bytes"] > 0
        for k in ("cpu_seconds_per_gib", "kernel_cpu_seconds_per_gib", "cpu_ratio_to_kernel"):
            assert out[k] is not None and out[k] > 0, k
