"""The Grafana dashboard and the Prometheus alert rules: only real series, and rules that fire when they should."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "prerank.json"
SERIES = re.compile(r"\bprerank_[a-z_]+")


def _exposed(store: Path) -> set[str]:
    """Every sample name /metrics exposes after one request of each kind."""
    from prometheus_client.parser import text_string_to_metric_families

    with TestClient(create_app(Settings(store=f"local:{store}", poll_seconds=60))) as client:
        client.post("/prerank", json={"user": {"id": "nobody"}, "candidates": {"ad_ids": [1, 2, 10**12]}})
        client.post("/prerank", json={"user": {"id": "1"}, "candidates": {"ad_ids": []}})
        text = client.get("/metrics").text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_dashboard_references_only_metrics_the_service_exposes(store: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in SERIES.findall(expr)}
    exposed = _exposed(store)
    assert used and used <= exposed, sorted(used - exposed)
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in (
        "candidate count",
        "throughput",
        "errors and sheds",
        "stage",
        "version per replica",
        "swaps",
        "hit rate",
        "freshness",
        "shadow",
    ):
        assert topic in titles, topic
    provisioned = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {provisioned["datasources"][0]["uid"]}


def test_the_alert_rules_use_only_exposed_metrics(store: Path) -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    used = {name for rule in rules for name in SERIES.findall(rule["expr"])}
    assert used <= _exposed(store), sorted(used - _exposed(store))
    names = {r["alert"] for r in rules}
    assert {
        "PrerankP99OverSLO",
        "PrerankErrorRatio",
        "PrerankReplicasOnDifferentVersions",
        "PrerankIndexStale",
        "PrerankStoreErrors",
        "PrerankReplicasOnDifferentDeltas",
        "PrerankDeltasRefused",
    } <= names
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert all(any(m.endswith(f":{path}:ro") for m in mounts) for path in config["rule_files"])


@pytest.mark.integration
def test_alert_rules_pass_promtool_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 8 rules found" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
