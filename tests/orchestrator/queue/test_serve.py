"""The queue in front of the real pipeline: the tiny model on a local Ray with logical GPUs.

In this process (the session's Ray): generator actors killed under the queue server, and a
running job cancelled down to its engine. In a subprocess: `vlmq serve` itself, killed with
kill -9 mid-batch (with the Ray it started) and started again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray

from orchestrator.pipeline.driver import Pipeline
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.serve import ServerThread
from orchestrator.queue.states import JobState
from tests.support.pipeline_fixtures import jobs_sharing_images, running_pipeline
from tests.support.queue_history import check_history
from tests.support.serve_process import ServeProcess
from tests.support.waiting import wait_for
from worker.sampling_params import SamplingParams

QUEUE = "tiny"


def specs(count: int, prefix: str, max_new_tokens: int = 6) -> list[JobSpec]:
    return [
        JobSpec(job.job_id, QUEUE, job.prompt, job.images, job.sampling)
        for job in jobs_sharing_images(count, max_new_tokens, prefix)
    ]


@pytest.fixture
def namespace() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(redis_server: PrivateRedisServer, namespace: str) -> Iterator[Client]:
    client = Client(redis_server.url, namespace=namespace)
    yield client
    client.close()


@contextmanager
def served_pipeline(
    model_dir: Path, redis_server: PrivateRedisServer, namespace: str, num_generators: int
) -> Iterator[Pipeline]:
    """A started pipeline with a queue server over it (as `vlmq serve` runs them)."""
    with running_pipeline(
        model_dir, redis_server.url, pool_num_generator_actors=num_generators
    ) as pipeline:
        server = ServerThread(QueueConfig(redis_server.url, QUEUE, namespace), pipeline)
        server.start()
        try:
            yield pipeline
        finally:
            server.stop()


def test_killed_generators_under_the_server_cost_no_job(
    ray_cluster: None, model_dir: Path, redis_server: PrivateRedisServer, namespace: str,
    client: Client,
) -> None:
    with served_pipeline(model_dir, redis_server, namespace, num_generators=2) as pipeline:
        batch = client.new_batch()
        receipts = batch.submit_many(specs(30, "k", max_new_tokens=24))
        wait_for(lambda: batch.counts().succeeded >= 3, "some jobs done", 120)
        for generator in pipeline.pool.generators:
            ray.kill(generator, no_restart=False)  # Ray restarts them
        wait_for(lambda: batch.counts().done, "every job done", 300)
        history = check_history(client, batch, receipts, QUEUE)
    assert history.count(JobState.SUCCEEDED) == 30
    assert pipeline.progress.retries > 0  # the kills hit running requests


def test_a_running_job_cancelled_through_the_queue_leaves_its_engine(
    ray_cluster: None, model_dir: Path, redis_server: PrivateRedisServer, namespace: str,
    client: Client,
) -> None:
    with served_pipeline(model_dir, redis_server, namespace, num_generators=1) as pipeline:
        long = JobSpec("long", QUEUE, "Tell a long story.",
                       sampling=SamplingParams(max_new_tokens=4000))
        client.submit(long)
        generator = pipeline.pool.generators[0]
        wait_for(lambda: ray.get(generator.stats.remote()).num_active == 1,
                 "the long job generates", 120)
        assert client.cancel("long") is JobState.RUNNING
        result = client.wait("long", timeout_s=60)
        assert result.state is JobState.CANCELLED and result.error is not None
        assert result.error.type == "JobCancelledError" and not result.error.job_fault
        wait_for(lambda: ray.get(generator.stats.remote()).num_active == 0,
                 "its engine slot freed", 60)
        client.submit(specs(1, "after")[0])
        assert client.wait("after-0", timeout_s=120).state is JobState.SUCCEEDED


def test_vlmq_serve_killed_mid_batch_and_started_again_completes_every_job_once(
    model_dir: Path, redis_server: PrivateRedisServer, namespace: str, client: Client,
    tmp_path: Path,
) -> None:
    def serve() -> ServeProcess:
        return ServeProcess(
            "orchestrator.cli", "serve", "--model", str(model_dir), "--redis-url",
            redis_server.url, "--queue", QUEUE, "--namespace", namespace, "--num-gpus", "1",
            "--lease-s", "3", "--drain-grace-s", "5",
            log=tmp_path / "serve.log",
        ).start(timeout_s=180)

    first = serve()
    try:
        batch = client.new_batch()
        receipts = batch.submit_many(specs(24, "m", max_new_tokens=16))
        wait_for(lambda: batch.counts().succeeded >= 2, "some jobs done", 120)
        first.kill()
    finally:
        first.stop()
    assert batch.counts().running > 0  # it died holding jobs
    second = serve()
    try:
        wait_for(lambda: batch.counts().done, "every job done", 300)
        history = check_history(client, batch, receipts, QUEUE)
    finally:
        second.stop()
    assert history.count(JobState.SUCCEEDED) == 24
    assert max(history.deliveries.values()) == 2  # the dead server's claims were counted
    assert "stopped" in second.output
