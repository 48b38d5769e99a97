"""vlmq's metrics and actors as Prometheus and the Ray dashboard see them.

One Ray head of the test's own (with a dashboard: the state API needs one), one `vlmq serve`
joined to it, a small batch through the queue: jobs with images that repeat, one without, one
whose image is corrupt. Then Ray's Prometheus endpoint must show each metric vlmq declares
with a value that moved, and the state API every actor by its name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.metrics.cluster_view import cluster_view
from orchestrator.metrics.definitions import EXPORTED
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.schema import JobSpec
from tests.support.pipeline_fixtures import jobs_sharing_images, pipeline_model_dir
from tests.support.ray_head import RayHead
from tests.support.serve_process import ServeProcess
from tests.support.vlmq_cli import run_vlmq
from tests.support.waiting import wait_for
from worker.actors.metrics import MetricKind, MetricSpec
from worker.sampling_params import SamplingParams

QUEUE = "tiny"
CORRUPT = (Path(__file__).parents[3] / "orchestrator/sample_images/corrupt.jpg").read_bytes()

# Counters that move only on faults this batch has none of (a lost lease, a job out of
# deliveries, an actor dying), or on an engine that reports a prefix cache (the transformers
# engine has none), or, for ranges, on the pipeline's periodic sync of the ranges it carved
# from its leases, which a batch this short may finish before. Their names are still checked
# against the dashboard below.
NOT_MOVED_HERE = {
    "vlmq_stale_completions_refused_total", "vlmq_jobs_dead_lettered_total",
    "vlmq_jobs_retried_total", "vlmq_jobs_released_total", "vlmq_pipeline_retries_total",
    "vlmq_actor_request_failures_total", "vlmq_prefix_cache_queries_total",
    "vlmq_prefix_cache_hits_total", "vlmq_allocator_ranges_total",
}


@dataclass
class Served:
    head: RayHead
    namespace: str
    client: Client
    redis_url: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("metrics")
    redis_server = PrivateRedisServer(base)
    redis_server.start()
    # Short: Ray's socket paths under its temp dir must fit in 107 bytes.
    ray_dir = Path(tempfile.mkdtemp(prefix="vlmq-ray-", dir="/tmp"))
    head = RayHead(ray_dir).start()
    namespace = f"m-{uuid.uuid4().hex[:6]}"
    serve = ServeProcess(
        "orchestrator.cli", "serve", "--model", str(pipeline_model_dir(base)), "--redis-url",
        redis_server.url, "--queue", QUEUE, "--namespace", namespace, "--ray-address",
        head.address, "--vision-actors", "1", "--generator-actors", "2",
        log=base / "serve.log",
    )
    client = Client(redis_server.url, namespace=namespace)
    try:
        serve_with_token(serve)
        batch = client.new_batch()
        specs = [JobSpec(job.job_id, QUEUE, job.prompt, job.images, job.sampling)
                 for job in jobs_sharing_images(6, max_new_tokens=4, prefix="m")]
        specs.append(JobSpec("plain", QUEUE, "Say hi.", sampling=SamplingParams(4)))
        specs.append(JobSpec("corrupt", QUEUE, "What is <image>?", (CORRUPT,),
                             SamplingParams(4)))
        batch.submit_many(specs)
        wait_for(lambda: batch.counts().done, "every job done", 240)
        yield Served(head, namespace, client, redis_server.url)
    finally:
        serve.stop()
        client.close()
        head.stop()
        redis_server.stop()
        shutil.rmtree(ray_dir, ignore_errors=True)


def serve_with_token(serve: ServeProcess) -> None:
    """Start `vlmq serve` with RAY_AUTH_MODE=token: the head runs with token auth, and a
    driver joining a cluster by its address sends the token only when told to (KubeRay sets
    the variable on its pods). Set for the child only: this process's Ray reads it once."""
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        serve.start(timeout_s=240)
    finally:
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before


SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<tags>[^}]*)\})? (?P<value>\S+)$")


def samples(text: str) -> dict[str, list[tuple[str, float]]]:
    """Series name -> (tags, value) of each sample on a Prometheus text page."""
    found: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            found.setdefault(match["name"], []).append((match["tags"] or "", float(match["value"])))
    return found


def moved(spec: MetricSpec, page: dict[str, list[tuple[str, float]]]) -> bool:
    if spec.kind is MetricKind.GAUGE:
        return spec.exported_name in page
    series = spec.exported_name
    if spec.kind is MetricKind.HISTOGRAM:
        series += "_count"
    return any(value > 0 for _, value in page.get(series, []))


def test_every_metric_reaches_prometheus_with_a_value_that_moved(served: Served) -> None:
    expected = [spec for spec in EXPORTED if spec.name not in NOT_MOVED_HERE]
    missing: list[str] = []

    def all_moved() -> bool:
        page = samples(served.head.scrape())
        missing[:] = [spec.name for spec in expected if not moved(spec, page)]
        return not missing

    # Ray's agent exports what the processes flushed to it, every few seconds.
    try:
        wait_for(all_moved, "every vlmq metric on the endpoint", 120)
    except AssertionError as error:
        raise AssertionError(f"{error}; not moved: {missing}") from None
    page = samples(served.head.scrape())
    failed = dict(page["ray_vlmq_jobs_failed_total"])
    # The corrupt image's job failed as its own fault, counted under its error's type.
    types = {match[1] for tags in failed for match in re.finditer(r'error_type="(\w+)"', tags)}
    assert any(t.endswith("Error") and "Image" in t for t in types), types


def test_the_state_api_shows_every_actor_by_its_name(served: Served) -> None:
    view = cluster_view(served.head.dashboard_url, name_prefix=f"{served.namespace}-")
    prefix = f"{served.namespace}-{QUEUE}"
    assert [actor.name for actor in view.of_role("vision")] == [f"{prefix}-vision-0"]
    assert [actor.name for actor in view.of_role("generator")] == [
        f"{prefix}-generator-0", f"{prefix}-generator-1",
    ]
    assert [actor.name for actor in view.of_role("allocator")] == [
        f"{served.namespace}-token-range-allocator"
    ]
    assert view.num_alive("generator") == 2
    assert all(actor.num_gpus > 0 for actor in (*view.of_role("vision"),
                                                *view.of_role("generator")))


def test_vlmq_status_shows_the_cluster_from_the_dashboard(served: Served) -> None:
    shown = run_vlmq(
        "status", "--queue", QUEUE, "--namespace", served.namespace, "--redis-url",
        served.redis_url, "--ray-dashboard", served.head.dashboard_url, "--json",
        env={"RAY_AUTH_MODE": "token"},
    )
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    prefix = f"{served.namespace}-{QUEUE}"
    names = {(actor["role"], actor["name"], actor["state"]) for actor in view["cluster"]["actors"]}
    assert {("generator", f"{prefix}-generator-0", "ALIVE"),
            ("generator", f"{prefix}-generator-1", "ALIVE"),
            ("vision", f"{prefix}-vision-0", "ALIVE")} <= names
    assert view["counters"]["succeeded"] == 7
    # The serving side's own report, from Redis: the same actors, each with what it runs.
    [load] = view["loads"]
    assert {(a["role"], a["name"], a["state"], a["running"]) for a in load["actors"]} == {
        ("vision", f"{prefix}-vision-0", "open", 0),
        ("generator", f"{prefix}-generator-0", "open", 0),
        ("generator", f"{prefix}-generator-1", "open", 0),
    }
    text = run_vlmq(
        "status", "--queue", QUEUE, "--namespace", served.namespace, "--redis-url",
        served.redis_url, "--ray-dashboard", served.head.dashboard_url,
        env={"RAY_AUTH_MODE": "token"},
    ).stdout
    assert f"{prefix}-generator-1  ALIVE  GPU " in text and "restarts 0  running 0" in text
