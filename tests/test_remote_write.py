"""The fleet by remote_write, end to end: two daemons, each scraped by its own Prometheus in
agent mode with the shipped ``deploy/prometheus/remote-write-thanos.yml`` (its URL pointed at
a third Prometheus that accepts remote writes, as Thanos Receive or Mimir would); every
dashboard query to the receiver returns both instances, each with its policy."""

from __future__ import annotations

import time
from pathlib import Path

from .daemon import Daemon
from .promserver import prometheus, query, ready_endpoint
from .test_prometheus import dashboard_exprs, dashboard_query

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("go", "jemalloc-decay")
HOSTS = ("sweeperd-host-a", "sweeperd-host-b")


def _agent_config(target: str, host: str, receiver_port: int) -> str:
    """The shipped example for one host, as its README says to fill it in."""
    text = (ROOT / "deploy/prometheus/remote-write-thanos.yml").read_text()
    for needle in ('["127.0.0.1:9464"]', "instance: sweeperd-host-a",
                   "replica: sweeperd-host-a", "http://thanos-receive:19291/api/v1/receive",
                   "scrape_interval: 5s", "batch_send_deadline: 5s"):
        assert needle in text, needle
    return (text.replace('["127.0.0.1:9464"]', f'["{target}"]')
            .replace("instance: sweeperd-host-a", f"instance: {host}")
            .replace("replica: sweeperd-host-a", f"replica: {host}")
            .replace("http://thanos-receive:19291/api/v1/receive",
                     f"http://127.0.0.1:{receiver_port}/api/v1/write")
            .replace("scrape_interval: 5s", "scrape_interval: 1s")
            .replace("batch_send_deadline: 5s", "batch_send_deadline: 1s"))


def _both(api: str, n: int = 12) -> bool:
    """Both hosts' series, with enough samples written for the dashboard's rates."""
    r = query(api, "count_over_time(sweeperd_gc_cycles_total[1m])")
    return len(r) == 2 and all(float(x["value"][1]) >= n for x in r)


def test_every_dashboard_query_to_the_remote_write_receiver_returns_both_hosts(tmp_path):
    daemons = [Daemon("--heap-mib", "32", "--sweepers", "1", "--mutators", "1", "--policy", p)
               for p in POLICIES]
    try:
        targets = [d.metrics.removeprefix("http://").removesuffix("/metrics") for d in daemons]
        # the receiver: a plain server that scrapes nothing (an empty scrape list)
        with prometheus("global:\n  scrape_interval: 1s\n", tmp_path / "receiver",
                        ready_endpoint, receiver=True) as (api, rport), \
                prometheus(_agent_config(targets[0], HOSTS[0], rport), tmp_path / "a",
                           ready_endpoint, agent=True), \
                prometheus(_agent_config(targets[1], HOSTS[1], rport), tmp_path / "b",
                           ready_endpoint, agent=True):
            deadline = time.monotonic() + 180  # the agents' first sends, then 12 samples each
            while not _both(api):
                assert time.monotonic() < deadline, (
                    "the receiver never had both hosts' series: "
                    + str(query(api, "count by (instance) (sweeperd_gc_cycles_total)")))
                time.sleep(1)
            info = query(api, "sweeperd_scavenge_policy_info")
            assert {(x["metric"]["instance"], x["metric"]["policy"]) for x in info} == set(
                zip(HOSTS, POLICIES, strict=True))
            assert {x["metric"]["replica"] for x in info} == set(HOSTS)  # external labels
            failures = []
            for title, expr in dashboard_exprs():
                got = query(api, dashboard_query(expr))
                seen = {(x["metric"].get("instance"), x["metric"].get("policy")) for x in got}
                if seen != set(zip(HOSTS, POLICIES, strict=True)):
                    failures.append(f"{title}: {expr}: {sorted(seen, key=str)}")
            assert not failures, "\n".join(failures)
            # only sweeperd's series were written (the example's write_relabel_configs)
            names = query(api, 'count by (__name__) ({__name__=~".+"})')
            assert names and all(x["metric"]["__name__"].startswith("sweeperd_") for x in names)
        for d in daemons:
            assert d.stop() == 0
    finally:
        for d in daemons:
            d.close()
