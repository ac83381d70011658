"""deploy/monitoring/: every metric the dashboard and the alerting rules name exists (in the
services' code, or in RabbitMQ's Prometheus plugin), and the rules are well formed."""

import importlib
import json
import re
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
# The modules that define the services' metrics (imported: they register them).
METRIC_MODULES = ["services.sender.metrics", "shared.outbox", "shared.http"]
# Of RabbitMQ's Prometheus plugin, per-object metrics (/metrics/detailed), 3.10.
RABBITMQ_METRICS = {"rabbitmq_detailed_queue_messages", "rabbitmq_detailed_queue_messages_ready"}
SUFFIXES = {"counter": ["_total", "_created"], "gauge": [""], "summary": ["_sum", "_count"],
            "histogram": ["_bucket", "_sum", "_count", "_created"]}


def exported() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = set()
    for family in prometheus_client.REGISTRY.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, [""])}
    return names


def named(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    return {word for word in re.findall(r"\b[a-z_][a-z0-9_]*\b", without_labels)
            if word.startswith(("mail_", "rabbitmq_"))}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    doc = yaml.safe_load((MONITORING / "grafana-dashboard.yaml").read_text())
    assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
    return json.loads(doc["data"]["mail-delivery.json"])


def expressions() -> list[str]:
    return ([rule["expr"] for rule in rules()]
            + [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]])


@pytest.mark.parametrize("expr", expressions())
def test_every_metric_named_exists(expr: str) -> None:
    metrics = named(expr)
    assert metrics, f"no metric in {expr!r}"
    unknown = metrics - exported() - RABBITMQ_METRICS
    assert not unknown, f"{expr!r} names metrics nothing exports: {sorted(unknown)}"


def test_the_rules_are_well_formed() -> None:
    seen = set()
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] not in seen and re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
        seen.add(rule["alert"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
        # Balanced brackets, and a comparison: an alert expression selects what is wrong.
        expr = rule["expr"]
        for left, right in ("()", "[]", "{}"):
            assert expr.count(left) == expr.count(right), expr
        assert re.search(r"[<>=]=?\s*\d", expr), expr


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    alerts = {rule["alert"] for rule in rules()}
    assert {"MailAccountPausedLong", "MailDeadLettersGrowing", "MailOutboxNotDraining",
            "MailSenderWithoutConsumers", "MailPauseShorterThanInterval"} <= alerts


def test_the_dashboard_panels_have_unique_ids_and_a_query() -> None:
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels) >= 10
    assert all(panel["targets"][0]["expr"] for panel in panels)
