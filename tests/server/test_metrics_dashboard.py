"""docs/dashboards/conclave-etcd.json and docs/alerts/etcd-alerts.yml parse, and every metric name
they query is exported by a live member of a 3-member cluster."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from conclave.server.launcher import ProcessCluster

from .conftest import Etcd, leader_of
from .test_metrics import scrape_text

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "dashboards" / "conclave-etcd.json"
ALERTS = REPO / "docs" / "alerts" / "etcd-alerts.yml"
NAME = re.compile(r"\b(?:etcd|grpc|process|python|conclave)_[a-z0-9_]+")


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"], "the dashboard has no panels"
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_files_parse_and_have_their_parts() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {"etcdNoLeader", "etcdHighNumberOfLeaderChanges", "etcdHighFsyncDurations",
            "etcdHighNumberOfFailedProposals"} <= names
    for r in rules:
        assert r["expr"] and r["for"], r
        assert r["labels"]["severity"] in ("warning", "critical"), r  # type: ignore[index]


def test_every_queried_metric_is_exported(cluster_factory: Callable[..., ProcessCluster]) -> None:
    cluster = cluster_factory(3, extra_args=["--metrics", "extensive"])
    leader = leader_of(cluster)
    c = Etcd(leader.endpoint)
    try:
        c.put(b"k", b"v")
        c.get(b"k")
    finally:
        c.close()
    samples = [s for fam in text_string_to_metric_families(scrape_text(leader.client_port)) for s in fam.samples]
    exported = {s.name for s in samples}
    label_names = {k for s in samples for k in s.labels}  # grpc_code=... is a label, not a metric
    used = {n for e in dashboard_exprs() for n in NAME.findall(e)}
    used |= {n for r in alert_rules() for n in NAME.findall(str(r["expr"]))}
    used -= label_names
    assert len(used) >= 25
    missing = sorted(used - exported)
    assert not missing, f"queried but not exported: {missing}"
