"""Nothing in the pipeline waits forever: every wait ends, with an outcome for every job.

On real local Ray: the only generator or vision actor killed for good (`ray.kill` with
`no_restart`, which Ray reports DEAD), `close()` while jobs run, and a jobs iterable that
raises. Each test is bounded by pytest's timeout, so a hang fails it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from orchestrator.pipeline.actor_pool import actor_is_dead
from orchestrator.pipeline.job import JobOutcome, JobRequest
from orchestrator.private_redis import PrivateRedisServer
from tests.support.pipeline_fixtures import (
    jobs_sharing_images,
    outcomes_by_id,
    png,
    running_pipeline,
)
from tests.support.waiting import wait_for
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")


def new_image_jobs(count: int, prefix: str, first_seed: int) -> list[JobRequest]:
    """Jobs of one image each, no two alike (and none like another call's, by `first_seed`)."""
    return [
        JobRequest(f"{prefix}-{i}", "Describe <image>.", (png(48 + i, 40, seed=first_seed + i),),
                   SamplingParams(4))
        for i in range(count)
    ]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["generator", "vision"])
def test_jobs_fail_typed_at_once_when_the_only_actor_of_a_kind_is_dead_for_good(
    model_dir: Path, redis_server: PrivateRedisServer, kind: str
) -> None:
    # The restart deadline is far beyond the test's timeout: only Ray reporting the actor
    # DEAD can end these jobs in time. New images each time, so every job needs a vision call.
    with running_pipeline(
        model_dir, redis_server.url, pool_num_generator_actors=1, actor_restart_timeout_s=3600
    ) as pipeline:
        (warm,) = pipeline.run(new_image_jobs(1, "warm", first_seed=100))
        assert warm.ok
        actor = (pipeline.pool.generators if kind == "generator" else pipeline.pool.vision)[0]
        ray.kill(actor, no_restart=True)
        kill_landed(actor)
        jobs = new_image_jobs(4, "after", first_seed=200)
        outcomes = outcomes_by_id(list(pipeline.run(jobs)))
    assert set(outcomes) == {job.job_id for job in jobs}
    for outcome in outcomes.values():
        assert outcome.failure is not None, outcome
        assert outcome.failure.error_type == "NoActorAvailableError"
        assert not outcome.failure.is_job_error
        assert f"no {kind} actor is up: {kind} 0 is dead for good" in outcome.failure.message


@pytest.mark.timeout(180)
def test_close_during_run_ends_every_admitted_job_and_the_iterator(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    jobs = jobs_sharing_images(12, prefix="closed")
    outcomes: list[JobOutcome] = []
    errors: list[BaseException] = []
    with running_pipeline(
        model_dir, redis_server.url, pool_num_generator_actors=1, max_in_flight_per_generator=2
    ) as pipeline:
        # A stopped generator process: requests sent to it never finish on their own.
        os.kill(ray.get(pipeline.pool.generators[0].stats.remote()).pid, signal.SIGSTOP)

        def consume() -> None:
            try:
                outcomes.extend(pipeline.run(jobs))
            except BaseException as error:
                errors.append(error)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        # Every admission slot taken (2 x 2 per generator), requests on the generator.
        wait_for(
            lambda: pipeline.progress.submitted == pipeline.config.max_jobs_in_flight,
            "every admission slot taken",
        )
        wait_for(lambda: pipeline.router.in_flight[0] > 0, "a request on the generator")
        pipeline.close()
        consumer.join(60)
        assert not consumer.is_alive(), "run() still blocked after close()"
        submitted = pipeline.progress.submitted
    assert not errors, errors
    by_id = outcomes_by_id(outcomes)
    assert len(by_id) == submitted == 4  # one outcome per admitted job; no more were admitted
    for outcome in by_id.values():
        assert outcome.failure is not None and outcome.failure.error_type == "PipelineClosedError"
        assert not outcome.failure.is_job_error


@pytest.mark.timeout(180)
def test_a_jobs_iterable_that_raises_still_yields_the_admitted_jobs_outcomes(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    jobs = jobs_sharing_images(3, prefix="fed")

    def feed() -> Iterator[JobRequest]:
        yield from jobs
        raise RuntimeError("the job source broke")

    outcomes: list[JobOutcome] = []
    with running_pipeline(model_dir, redis_server.url) as pipeline:
        with pytest.raises(RuntimeError, match="the job source broke"):
            for outcome in pipeline.run(feed()):
                outcomes.append(outcome)
        # The pipeline is still usable afterwards.
        (after,) = pipeline.run(jobs_sharing_images(1, prefix="after"))
    by_id = outcomes_by_id(outcomes)
    assert set(by_id) == {job.job_id for job in jobs}
    assert all(o.ok for o in by_id.values()), [o.failure for o in by_id.values()]
    assert after.ok


def kill_landed(actor: object) -> None:
    """`ray.kill` only sends the kill; until Ray has the actor DEAD it may still answer."""
    wait_for(lambda: actor_is_dead(actor), "Ray reports the killed actor DEAD", timeout_s=30)
