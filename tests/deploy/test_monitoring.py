"""The monitoring files in deploy/: Grafana dashboards and their provisioning, the Prometheus
alert rules (promtool), and the PromQL name extraction that tests/deploy/test_topology.py uses to
check every queried metric is exported by a running pool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Names Prometheus makes itself, or other exporters in compose.yaml export (node-exporter,
# postgres-exporter): the alert rules use them; no chatserver process can export them.
EXTERNAL = re.compile(r"^(up|node_\w+|pg_\w+)$")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                "and", "or", "unless", "inf", "nan"}  # fmt: skip


def exported_names(texts: list[str]) -> set[str]:
    """Every series name these /metrics pages export (a family with no sample yet counts by its
    declared type: counter ``_total``, histogram ``_bucket``/``_sum``/``_count``)."""
    names: set[str] = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            names.update(sample.name for sample in family.samples)
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left after quoted strings, label
    matchers, grouping clauses, functions, durations, numbers and keywords are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_queries() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                found.setdefault(f"{path.name}: {panel['title']}", []).append(target["expr"])
    return found


def alert_queries() -> dict[str, list[str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {rule["alert"]: [rule["expr"]] for group in rules["groups"] for rule in group["rules"]}


def test_the_name_extraction_finds_names_and_only_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(chatserver_x_bucket{job="a b"}[5m])))'
        " / on (instance) group_left chatserver_y or vector(0) > 3 * 900"
    )
    assert metric_names(expr) == {"chatserver_x_bucket", "chatserver_y"}


def test_dashboards_are_provisioned_for_grafana() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    uid = source["datasources"][0]["uid"]
    provider = yaml.safe_load((provisioning / "dashboards" / "chatserver.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    uids = set()
    for path in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])
    assert len(uids) == 4  # pool overview, store, compliance, security


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    # The paths are the container's: point them at this checkout's files for the check.
    (tmp_path / "token").write_text("t")
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    text = text.replace("/etc/prometheus/alerts.yml", str(DEPLOY / "prometheus" / "alerts.yml"))
    text = text.replace("/etc/prometheus/secrets/management_token", str(tmp_path / "token"))
    (tmp_path / "prometheus.yml").write_text(text)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unexported_name_would_be_caught() -> None:
    page = "# HELP chatserver_a A\n# TYPE chatserver_a counter\nchatserver_a_total 1.0\n"
    exported = exported_names([page])
    assert "chatserver_a_total" in exported
    assert metric_names("rate(chatserver_a_total[5m])") <= exported
    assert not metric_names("rate(chatserver_a_typo_total[5m])") <= exported
