"""The shipped Grafana dashboard and Prometheus rules name only metrics the daemon serves.

The dashboard (configs/grafana/signaltwin.json) and the alerting rules
(configs/prometheus/signaltwin-rules.yml) are checked against the metrics a
daemon really registers, so neither can drift from controller/metrics.py; the
rules and the dashboard's queries are parsed by promtool, and the rules' unit
tests (signaltwin-rules.test.yml) run with it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from controller.metrics import Metrics, build_registry

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "configs" / "grafana" / "signaltwin.json"
RULES = REPO / "configs" / "prometheus" / "signaltwin-rules.yml"
RULE_TESTS = REPO / "configs" / "prometheus" / "signaltwin-rules.test.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package 'prometheus'; scripts/setup.sh --dev)",
)

# series Prometheus makes itself for every scrape target
SCRAPE_SERIES = frozenset({"up"})

_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}
_KEYWORDS = frozenset(
    "and or unless bool offset inf nan by without on ignoring group_left group_right".split()
)


def exposed_names(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Family name -> the series names a scrape shows for it (``_total``, ``_bucket``, ...)."""
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        shown = {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
        shown |= {s.name for s in family.samples if not s.name.endswith("_created")}
        names[family.name] = shown
    return names


def daemon_series() -> set[str]:
    """Every series name the daemon serves (``signaltwin run`` adds the process collectors)."""
    registry = build_registry(process_metrics=True)
    Metrics(registry)
    return set().union(*exposed_names(registry).values())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{job=~"$job"}[$window])))'
        " / on (instance) group_left sum(b_total offset 5m) > 3 * 240 and c unless vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


# --- the dashboard ---------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))  # collapsed rows hold their panels


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    queries = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        selector = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", text)
        if selector:  # label_values(metric{...}, label): the selector is PromQL
            queries.append(selector.group(1))
        else:
            queries.append(re.sub(r"^\s*query_result\((.*)\)\s*$", r"\1", text))
    return queries


def test_dashboard_queries_use_only_metrics_the_daemon_serves() -> None:
    served = daemon_series()
    used = set().union(*(metric_names(q) for q in dashboard_queries(load_dashboard())))
    assert used, "no metric found in the dashboard's queries"
    assert used <= served, f"not served by the daemon: {sorted(used - served)}"


def test_dashboard_shows_every_signaltwin_metric() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    used = set().union(*(metric_names(q) for q in dashboard_queries(load_dashboard())))
    missing = [family for family, shown in exposed_names(registry).items() if not shown & used]
    assert not missing, f"metrics the dashboard does not show: {missing}"


def test_dashboard_panels_query_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    (variable,) = (v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS")
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    ids = []
    for panel in panels(dashboard["panels"]):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), panel["id"]
        sources = [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]
        assert all(s == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for s in sources)
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for n, query in enumerate(dashboard_queries(load_dashboard())):
        expr = query.replace("$__rate_interval", "1m").replace("$window", "1h")
        expr = re.sub(r"\$\w+", ".*", expr)  # $job, $instance: All
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the alerting rules ----------------------------------------------------------------------


def alerting_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_use_only_metrics_the_daemon_serves() -> None:
    served = daemon_series() | SCRAPE_SERIES
    for rule in alerting_rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= served, f"{rule['alert']}: not served: {sorted(used - served)}"


def test_every_alert_says_how_long_how_bad_and_what_to_do() -> None:
    rules = alerting_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for name in (rule["alert"] for rule in alerting_rules()):
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no firing case"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: no quiet case"


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_runs_the_rules_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the documentation -----------------------------------------------------------------------


def test_the_metric_table_in_operations_md_lists_what_the_daemon_serves() -> None:
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(signaltwin_\w+)` \|", text, flags=re.MULTILINE))
    registry = CollectorRegistry()
    Metrics(registry)
    documented = {family: {family, family + "_total"} & rows for family in exposed_names(registry)}
    assert all(documented.values()), [f for f, row in documented.items() if not row]
    assert rows <= set().union(*documented.values()), "rows for metrics the daemon lacks"
