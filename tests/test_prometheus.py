"""A real Prometheus (Debian's package) scrapes a real daemon; the dashboard's PromQL runs on it.

Outside CI a missing ``prometheus``/``promtool`` skips these tests with a loud reason; in CI
(``CI`` set, and ``.ci/run`` installs the package) a missing binary fails them.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from . import promserver
from .daemon import Daemon
from .promserver import get as _get
from .promserver import query

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/dashboards/sweeperd.json"
SCRAPE_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"


@pytest.fixture(scope="module")
def daemon():
    d = Daemon("--heap-mib", "64", "--sweepers", "2", "--mutators", "2")
    try:
        yield d
    finally:
        d.close()


def _enough_scrapes(api: str) -> bool:  # enough for every rate() in the dashboard
    r = query(api, "count_over_time(sweeperd_gc_cycles_total[1m])")
    return bool(r) and float(r[0]["value"][1]) >= 8


@pytest.fixture(scope="module")
def prometheus(daemon, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prom")
    target = daemon.metrics.removeprefix("http://").removesuffix("/metrics")
    text = SCRAPE_CONFIG.read_text()
    assert '"127.0.0.1:9464"' in text and "scrape_interval: 5s" in text, \
        "deploy/prometheus/prometheus.yml no longer scrapes the default address"
    config = (text.replace('"127.0.0.1:9464"', f'"{target}"')
              .replace("scrape_interval: 5s", "scrape_interval: 1s"))
    with promserver.prometheus(config, tmp, _enough_scrapes) as (api, _):
        yield api


def dashboard_query(expr: str, instance: str = ".*", policy: str = ".*") -> str:
    """A dashboard expression as Grafana sends it: 1 s scrapes, so a 10 s rate window; the
    instance and policy variables at a choice (All: Grafana's ``.*``)."""
    return (expr.replace("$__rate_interval", "10s").replace("$instance", instance)
            .replace("$policy", policy))


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def test_the_dashboard_has_the_panels_an_operator_needs():
    titles = {t for t, _ in dashboard_exprs()}
    for needle in ("Sweep rate: spans/s", "Sweep rate: pages/s", "Sweep phase duration",
                   "GC cycles", "Heap classes", "True backing", "PSS", "RSS",
                   "Scavenger release rate", "Scavenger CPU fraction", "madvise",
                   "Fragmentation"):
        assert any(needle in t for t in titles), needle


def test_every_dashboard_expression_returns_data(prometheus):
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    failures = []
    for title, expr in exprs:
        q = dashboard_query(expr)
        assert "$" not in q, f"{title}: unknown Grafana variable in {expr}"
        try:
            r = _get(f"{prometheus}/query?query=" + urllib.parse.quote(q))
        except urllib.error.HTTPError as e:  # 400: the expression does not parse
            failures.append(f"{title}: {expr}: {e.read().decode()[:300]}")
            continue
        if r["status"] != "success" or not r["data"]["result"]:
            failures.append(f"{title}: {expr}: no data ({r})")
    assert not failures, "\n".join(failures)


def test_prometheus_scraped_every_series_it_was_served(prometheus, daemon):
    body = urllib.request.urlopen(daemon.metrics, timeout=10).read().decode()
    names = set(re.findall(r"^(sweeperd_\w+)[{ ]", body, flags=re.M))
    r = _get(f"{prometheus}/label/__name__/values")
    stored = set(r["data"])
    assert names and names <= stored, names - stored


def test_promtool_check_metrics_is_clean_on_a_live_scrape(daemon):
    promtool = promserver.binary("promtool")
    body = urllib.request.urlopen(daemon.metrics, timeout=10).read()
    assert b"sweeperd_gc_cycles_total" in body
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        r.stdout.decode() + r.stderr.decode())


def test_promtool_accepts_the_shipped_scrape_config():
    promtool = promserver.binary("promtool")
    r = subprocess.run([promtool, "check", "config", str(SCRAPE_CONFIG)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dashboard_browses_hosts_and_compares_policies():
    """Variables $instance and $policy (multi-value, All = .*) filter every panel, and each
    series carries its policy (joined from sweeperd_scavenge_policy_info)."""
    dash = json.loads(DASHBOARD.read_text())
    names = {v["name"]: v for v in dash["templating"]["list"]}
    for var in ("instance", "policy"):
        v = names[var]
        assert v["type"] == "query" and v["multi"] and v["includeAll"]
        assert "sweeperd_scavenge_policy_info" in v["query"]["query"]
    for title, expr in dashboard_exprs():
        assert 'instance=~"$instance"' in expr and 'policy=~"$policy"' in expr, title


def test_the_fleet_configs_pass_promtool():
    promtool = promserver.binary("promtool")
    for name in ("federation.yml", "remote-write-thanos.yml"):
        path = ROOT / "deploy/prometheus" / name
        r = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, name + ": " + r.stdout + r.stderr
    fed = (ROOT / "deploy/prometheus/federation.yml").read_text()
    assert "honor_labels: true" in fed and "/federate" in fed
    assert "/api/v1/receive" in (ROOT / "deploy/prometheus/remote-write-thanos.yml").read_text()


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    ds = (ROOT / "deploy/grafana/provisioning/datasources/sweeperd.yml").read_text()
    prov = (ROOT / "deploy/grafana/provisioning/dashboards/sweeperd.yml").read_text()
    dash = json.loads(DASHBOARD.read_text())
    uid = re.search(r"uid: (\S+)", ds).group(1)
    assert dash["templating"]["list"][0]["current"]["value"] == uid
    assert "type: prometheus" in ds and "url: http://127.0.0.1:9090" in ds
    assert "type: file" in prov and "path:" in prov
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["description"] and p["targets"] and p["datasource"]["uid"] == "${datasource}"


def test_the_scraped_daemon_ran_without_a_death(prometheus, daemon):
    """The daemon Prometheus watched ran on its defaults (no debug checks) the whole time: no
    worker may have died (a lost mark once killed a sweeper within seconds)."""
    st = daemon.status()
    assert st["cycle"] > 5
    assert st["deaths"] == {"sweeper": 0, "mutator": 0, "scavenger": 0}, st["deaths"]
