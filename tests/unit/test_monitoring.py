"""The Grafana dashboard and the Prometheus alerts ask only for metrics the operator exports
(operator/promoter/metrics.py), with labels those metrics have, and the dashboard shows each of
them. (`promtool check rules` parses the PromQL: tests/integration/test_chart.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from promoter.metrics import PREFIX, Metrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "charts" / "mlflow-seldon-promoter" / "monitoring"
DASHBOARD = json.loads((MONITORING / "dashboard.json").read_text())
ALERTS = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
METRIC = re.compile(rf"\b{PREFIX}_[a-z_]+\b")
# Labels Prometheus adds when it scrapes (a ServiceMonitor adds namespace, pod, service too).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def exported() -> dict[str, set[str]]:
    """Every series name the operator serves -> its labels."""
    out: dict[str, set[str]] = {}
    for family in Metrics().registry.collect():
        collector_labels = set(_labels(family.name))
        for suffix in SUFFIXES[family.type]:
            out[family.name + suffix] = collector_labels | ({"le"} if suffix == "_bucket" else set())
    return out


def _labels(family: str) -> tuple[str, ...]:
    metrics = Metrics()
    for collector in vars(metrics).values():
        if getattr(collector, "_name", None) in (family, family + "_total"):
            return tuple(collector._labelnames)
    raise KeyError(family)


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for panel in DASHBOARD["panels"]:
        out += [(panel["title"], t["expr"]) for t in panel["targets"]]
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            out.append((f"${variable['name']}", variable["definition"]))
    return out


def alert_queries() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for group in ALERTS["groups"] for rule in group["rules"]]


QUERIES = dashboard_queries() + alert_queries()


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    for matchers in re.findall(rf"{PREFIX}_[a-z_]+\{{([^}}]*)\}}", expr):
        labels.update(m.group(1) for m in re.finditer(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[w for w, _ in QUERIES])
def test_each_query_names_only_series_the_operator_exports(where: str, expr: str) -> None:
    names = set(METRIC.findall(expr))
    assert names, f"{where}: no {PREFIX}_* series in {expr!r}"
    assert sorted(names - set(exported())) == [], where


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[w for w, _ in QUERIES])
def test_each_query_groups_and_filters_by_labels_its_series_have(where: str, expr: str) -> None:
    series = exported()
    have = set.union(*(series[name] for name in METRIC.findall(expr))) | TARGET_LABELS
    assert sorted(grouping_labels(expr) - have) == [], where


def test_the_dashboard_shows_every_metric_the_operator_exports() -> None:
    shown = {name for _, expr in dashboard_queries() for name in METRIC.findall(expr)}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in exported()}
    assert sorted(f for f in families if not any(s.startswith(f) for s in shown)) == []


def test_the_alerts_cover_failing_promotions_unavailable_upstreams_and_slow_reconciles() -> None:
    rules: dict[str, dict[str, Any]] = {r["alert"]: r for g in ALERTS["groups"] for r in g["rules"]}
    assert 'outcome="Failed"' in rules["ModelPromotionFailing"]["expr"]
    assert f"{PREFIX}_upstream_errors_total" in rules["ModelPromotionUpstreamUnavailable"]["expr"]
    assert rules["ModelPromotionUpstreamUnavailable"]["for"] == "10m"
    assert "histogram_quantile(0.99" in rules["ModelPromotionReconcileSlow"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_panel_reads_the_chosen_data_source_and_job() -> None:
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], panel["title"]
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
