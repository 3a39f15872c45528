"""``sweeperd bench scrape``: real daemons scraped, figures per size and their ratio (a tiny
run: the figures are the benchmark's business, their presence and sense are the test's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sweeperd.bench.scrape import scenario_toml
from sweeperd.cli import build_parser
from sweeperd.workload.scenario import parse


def test_a_tiny_scrape_bench_reports_every_size_and_the_ratio():
    out = subprocess.run([sys.executable, "-m", "sweeperd.cli", "bench", "scrape",
                          "--heap-mib", "64,128", "--seconds", "3", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["bench"] == "scrape" and [s["heap_mib"] for s in r["sizes"]] == [64, 128]
    for s in r["sizes"]:
        assert s["scrapes"] >= 1
        assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert s["objects_bytes"] > 0  # the mutators were running
        assert s["arena_backed_bytes"] > 0 and s["body_bytes"] > 1000
    assert r["p99_ratio"] == pytest.approx(r["sizes"][1]["p99_ms"] / r["sizes"][0]["p99_ms"])
    assert r["goal"] == {"p99_ms": 10.0, "p99_ratio": 1.2}
    assert isinstance(r["meets_goal"], bool)


@pytest.mark.parametrize("bad", ["", "0", "-1", "abc", "64,,128", "16385", "64;128"])
def test_bad_sizes_are_usage_errors(bad, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "scrape", "--heap-mib", bad])
    assert e.value.code == 2


@pytest.mark.parametrize("mib", [1, 64, 256, 16384])
def test_the_generated_scenario_is_valid_and_fits_its_heap(mib):
    text, ramp = scenario_toml(mib, 180)
    sc = parse(text, "bench")
    assert sc.scenario.heap_mib == mib and ramp > 0
    assert sc.phase[0].seconds == pytest.approx(ramp, abs=1e-3)


def test_sigterm_leaves_no_daemon_and_no_temporary_directory(tmp_path):
    """A benchmark stopped by SIGTERM (a CI job cancelled, ``kill``) cleans up as on Ctrl-C:
    the daemon it started is stopped and its temporary directory removed; exit 143."""
    import os
    import pathlib
    import signal
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.Popen([sys.executable, "-m", "sweeperd.cli", "bench", "scrape",
                          "--heap-mib", "64", "--seconds", "600"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        children: list[int] = []
        while not children:  # the event: its daemon is running (a child process)
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                children = [int(x) for x in f.read().split()]
            time.sleep(0.1)
        assert list(tmp_path.glob("sweeperd-bench-scrape-*"))
        p.send_signal(signal.SIGTERM)
        assert p.wait(120) == 128 + signal.SIGTERM
        assert not list(tmp_path.glob("sweeperd-bench-scrape-*"))
        for c in children:  # gone, or a zombie its parent's exit leaves to init
            stat = pathlib.Path(f"/proc/{c}/stat")
            assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z", (
                f"daemon {c} outlived the benchmark")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
