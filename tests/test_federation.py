"""A fleet in one view: two daemons with different scavenger policies, one Prometheus scraping
both, a second federating from the first with the shipped federation.yml; every dashboard
query through the second returns both hosts, each with its policy."""

from __future__ import annotations

from pathlib import Path

from .daemon import Daemon
from .promserver import prometheus, query
from .test_prometheus import dashboard_exprs, dashboard_query

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("go", "jemalloc-decay")


def _target(d: Daemon) -> str:
    return d.metrics.removeprefix("http://").removesuffix("/metrics")


def _host_config(targets: list[str]) -> str:
    text = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    quoted = ", ".join(f'"{t}"' for t in targets)
    return (text.replace('"127.0.0.1:9464"', quoted)
            .replace("scrape_interval: 5s", "scrape_interval: 1s"))


def _global_config(host_port: int) -> str:
    text = (ROOT / "deploy/prometheus/federation.yml").read_text()
    assert '["sweeperd-host-a:9090", "sweeperd-host-b:9090"]' in text
    return (text.replace('["sweeperd-host-a:9090", "sweeperd-host-b:9090"]',
                         f'["127.0.0.1:{host_port}"]')
            .replace("scrape_interval: 15s", "scrape_interval: 1s"))


def _both(api: str, n: int = 8) -> bool:
    """Both daemons' series, with enough federated samples for the dashboard's rates."""
    r = query(api, "count_over_time(sweeperd_gc_cycles_total[1m])")
    return len(r) == 2 and all(float(x["value"][1]) >= n for x in r)


def test_a_dashboard_query_through_the_federating_server_returns_both_instances(tmp_path):
    daemons = [Daemon("--heap-mib", "32", "--sweepers", "1", "--mutators", "1", "--policy", p)
               for p in POLICIES]
    try:
        targets = [_target(d) for d in daemons]
        # the host server only has to hold both daemons' series: the queries go to the global
        # one, whose own wait (8 federated samples) is the one the dashboard's rates need
        with prometheus(_host_config(targets), tmp_path / "host",
                        lambda api: _both(api, 1)) as (_, host_port), \
                prometheus(_global_config(host_port), tmp_path / "global", _both) as (api, _):
            info = query(api, "sweeperd_scavenge_policy_info")
            assert {(x["metric"]["instance"], x["metric"]["policy"]) for x in info} == set(
                zip(targets, POLICIES, strict=True))  # honor_labels kept the hosts' labels
            failures = []
            for title, expr in dashboard_exprs():
                got = query(api, dashboard_query(expr))
                seen = {(x["metric"].get("instance"), x["metric"].get("policy")) for x in got}
                if seen != set(zip(targets, POLICIES, strict=True)):
                    failures.append(f"{title}: {expr}: {sorted(seen, key=str)}")
            assert not failures, "\n".join(failures)
            # and the variables narrow it: one policy, one host
            one = query(api, dashboard_query(dashboard_exprs()[0][1], policy="jemalloc-decay"))
            assert one and {x["metric"]["instance"] for x in one} == {targets[1]}
        for d in daemons:
            assert d.stop() == 0
    finally:
        for d in daemons:
            d.close()
