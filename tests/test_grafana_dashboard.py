"""The Grafana dashboard in deploy/grafana/ asks only for what vlmq exports.

Every query names metrics that `orchestrator.metrics.definitions.EXPORTED` declares, under the
names Ray's Prometheus export gives them (`ray_<name>`, histograms as `_bucket`, `_sum`,
`_count`), groups and filters only by tags those metrics carry, and every exported metric is
on some panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from orchestrator.metrics.definitions import EXPORTED

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "vlmq-dashboard.json"
_SERIES = {series: spec for spec in EXPORTED for series in spec.exported_series}
_NAME = re.compile(r"\bray_vlmq_[a-z0-9_]+\b")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(ray_vlmq_[a-z0-9_]+)\{([^}]*)\}")
_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    found += [variable["definition"] for variable in dashboard["templating"]["list"]
              if "definition" in variable]
    return found


def problems(expr: str) -> list[str]:
    """What is wrong with one query: metrics vlmq does not export, tags they do not carry."""
    names = _NAME.findall(expr)
    if not names:
        return ["no vlmq metric"]
    unknown = [name for name in names if name not in _SERIES]
    if unknown:
        return [f"not exported: {name}" for name in unknown]
    found = []
    tags = {"le", *(tag for name in names for tag in _SERIES[name].tag_keys)}
    for grouping in _GROUPING.findall(expr):
        labels = {label.strip() for label in grouping.split(",") if label.strip()}
        found += [f"no metric of it has tag {label}" for label in sorted(labels - tags)]
    for metric, selector in _SELECTOR.findall(expr):
        labels = set(_LABEL.findall(selector))
        found += [f"{metric} has no tag {label}"
                  for label in sorted(labels - set(_SERIES[metric].tag_keys))]
    return found


def test_every_query_names_only_exported_metrics_and_their_tags() -> None:
    exprs = queries(json.loads(DASHBOARD.read_text()))
    assert len(exprs) > 20
    assert {expr: problems(expr) for expr in exprs if problems(expr)} == {}


def test_every_exported_metric_is_on_a_panel() -> None:
    used = {_SERIES[name].name for expr in queries(json.loads(DASHBOARD.read_text()))
            for name in _NAME.findall(expr) if name in _SERIES}
    assert {spec.name for spec in EXPORTED} - used == set()


def test_the_check_sees_a_misspelled_metric_or_tag() -> None:
    assert problems("rate(ray_vlmq_jobs_claimed_totl[1m])") == [
        "not exported: ray_vlmq_jobs_claimed_totl"]
    assert problems("sum by (job_id) (ray_vlmq_queue_backlog)") == [
        "no metric of it has tag job_id"]
    assert problems('ray_vlmq_queue_backlog{line="1"}') == [
        "ray_vlmq_queue_backlog has no tag line"]
    assert problems("sum(rate(ray_vlmq_e2e_request_latency_seconds_bucket[5m]))") == []
