"""This process's gauges as Prometheus reads them from its Ray node's metrics endpoint.

The session's Ray runs without a dashboard, but each node's agent still exports what the
processes on it record through `ray.util.metrics`, on the node's `MetricsExportPort`. A test of
what vlmq *reports* reads it there, as Prometheus would. Ray exports every few seconds, so a
test waits for the value it expects (`wait_for`); to know a value is fresh, it first waits for
one that the state before could not have shown.
"""

from __future__ import annotations

import re
import urllib.request

import ray

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<tags>[^}]*)\})? (?P<value>\S+)$")
TAG = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics_url() -> str:
    """The metrics endpoint of the node this process runs on."""
    node_id = ray.get_runtime_context().get_node_id()
    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    node = next(node for node in nodes if node["NodeID"] == node_id)
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def gauge_of_this_process(name: str, **tags: str) -> float | None:
    """The gauge `name` (as declared: vlmq_...) with these tags, as this process last exported
    it; None while the endpoint does not answer or has no such sample."""
    try:
        with urllib.request.urlopen(metrics_url(), timeout=10) as response:
            page = response.read().decode()
    except OSError:
        return None
    wanted = {**tags, "WorkerId": ray.get_runtime_context().get_worker_id()}
    for line in page.splitlines():
        match = SAMPLE.match(line)
        if match is None or match["name"] != f"ray_{name}":
            continue
        found = dict(TAG.findall(match["tags"] or ""))
        if all(found.get(key) == value for key, value in wanted.items()):
            return float(match["value"])
    return None
