"""A scale-down under load, end to end: the tiny model on a local Ray with two logical GPUs.

A drained generator is busy when the drain begins (its slot runs requests: a draining slot
takes none, so what it runs after the drain began it ran then). Its requests all end
succeeded, each once, none run again (the actor was not killed under them), and only then is
the actor killed. A draining actor that dies under its request instead costs that request an
attempt elsewhere; its slot is retired, and a new actor that takes the slot later is open, not
gone, serves jobs, and is counted alive once (Prometheus's view of `vlmq_actors_alive`).
(The scaler's own decisions are in test_scaling.py; drains without Ray in test_draining.py.)
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
import ray

from orchestrator.pipeline.driver import Pipeline
from orchestrator.pipeline.job import JobOutcome, JobRequest
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.serve import ServerThread
from orchestrator.queue.states import JobState
from tests.support.pipeline_fixtures import jobs_sharing_images, running_pipeline
from tests.support.queue_history import check_history
from tests.support.ray_metrics import gauge_of_this_process
from tests.support.waiting import wait_for
from worker.sampling_params import SamplingParams

QUEUE = "drained"
# Tokens per request: the tiny model makes one in about a millisecond, so a request runs for
# seconds, long after the drain began (or the kill came) while it ran.
LONG = 1500


@pytest.fixture
def pipeline(ray_cluster: None, model_dir: Path, redis_server: PrivateRedisServer
             ) -> Iterator[Pipeline]:
    # Two requests per generator, so the jobs spread over both; no image affinity, so the
    # jobs after the drain go to the generator left, not wait for their images' home.
    with running_pipeline(
        model_dir, redis_server.url, pool_num_vision_actors=1, pool_num_generator_actors=2,
        max_in_flight_per_generator=2, affinity_slack=0,
    ) as started:
        yield started


def drain_a_busy_generator(pipeline: Pipeline) -> int:
    """Once both generators run requests, drain one; its slot, still running some."""
    router = pipeline.router
    wait_for(lambda: all(n > 0 for n in router.in_flight[:2]), "both generators busy", 120)
    pipeline.resize(1, 1).result(30)
    (drained,) = (index for index in (0, 1) if index in router.draining)
    # Nothing new goes to a draining slot: running now means running when the drain began.
    assert router.in_flight[drained] > 0, "the drained generator ran nothing"
    return drained


def test_a_drained_generator_finishes_its_running_jobs_before_it_is_killed(
    pipeline: Pipeline, redis_server: PrivateRedisServer,
) -> None:
    namespace = f"dl-{uuid.uuid4().hex[:8]}"
    config = QueueConfig(redis_server.url, QUEUE, namespace, idle_wait_s=0.2)
    with Client(redis_server.url, namespace=namespace) as client:
        server = ServerThread(config, pipeline)
        server.start()
        try:
            batch = client.new_batch()
            receipts = batch.submit_many([
                JobSpec(job.job_id, QUEUE, job.prompt, job.images, job.sampling)
                for job in jobs_sharing_images(8, LONG, "load")
            ])
            drained = drain_a_busy_generator(pipeline)
            actor = pipeline.pool.generators[drained]
            wait_for(lambda: batch.counts().done, "every job done", 240)
            history = check_history(client, batch, receipts, QUEUE)
        finally:
            server.stop()
    # Each job succeeded on its first delivery, on its first attempt: no generator was killed
    # under a request (that would have been an attempt again, or a delivery again).
    assert history.count(JobState.SUCCEEDED) == 8
    assert set(history.deliveries.values()) == {1}
    assert pipeline.progress.retries == 0 and pipeline.progress.succeeded == 8
    # ... and once its jobs were done, the drained generator was killed.
    wait_for(lambda: pipeline.actor_counts().generators.draining == 0, "the drain ends", 60)
    counts = pipeline.actor_counts().generators
    assert (counts.open, counts.gone) == (1, 0)
    assert pipeline.capacity == 4
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.stats.remote(), timeout=30)


def test_a_draining_generator_that_dies_leaves_its_slot_to_the_next_actor(
    pipeline: Pipeline,
) -> None:
    jobs = [dataclasses.replace(job, sampling=SamplingParams(LONG))
            for job in jobs_sharing_images(4, prefix="first")]
    first = [pipeline.submit(job) for job in jobs]
    drained = drain_a_busy_generator(pipeline)
    dying = pipeline.pool.generators[drained]
    ray.kill(dying, no_restart=True)
    outcomes = [future.result(240) for future in first]
    assert all(outcome.ok for outcome in outcomes), [o.failure for o in outcomes]
    # A request died with the actor and ran again elsewhere.
    assert pipeline.progress.retries >= 1
    assert max(outcome.attempts for outcome in outcomes) == 2
    wait_for(lambda: pipeline.actor_counts().generators.draining == 0, "the drain ends", 60)
    assert pipeline.actor_counts().generators.open == 1
    # The drain took the dying actor out of the alive count; its death did not take it again.
    wait_for(lambda: alive_generators() == 1.0, "one generator counted alive", 60)

    pipeline.resize(1, 2).result(30)
    replacement = pipeline.pool.generators[drained]
    assert replacement is not dying  # the retired slot is the new actor's
    wait_for(lambda: pipeline.actor_counts().generators.open == 2, "the new actor opens", 120)
    second = run_all(pipeline, [
        dataclasses.replace(job, job_id=f"second-{i}", sampling=SamplingParams(8))
        for i, job in enumerate(jobs_sharing_images(8, prefix="second"))
    ])
    assert all(outcome.ok for outcome in second)
    counts = pipeline.actor_counts().generators
    assert (counts.open, counts.gone, counts.draining) == (2, 0, 0)
    assert ray.get(replacement.stats.remote(), timeout=30).num_completed > 0
    wait_for(lambda: alive_generators() == 2.0, "both generators counted alive", 60)


def run_all(pipeline: Pipeline, jobs: list[JobRequest]) -> list[JobOutcome]:
    futures: list[Future[JobOutcome]] = [pipeline.submit(job) for job in jobs]
    return [future.result(240) for future in futures]


def alive_generators() -> float | None:
    return gauge_of_this_process("vlmq_actors_alive", role="generator")
