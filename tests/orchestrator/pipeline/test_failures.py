"""Actors dying under requests, for real: each request still ends exactly once.

Generators and vision actors are killed with `ray.kill` (Ray restarts them) and with SIGKILL of
their process; a poison request crashes its generator every time it runs. Kills wait for a
progress signal (a finished job, vision calls seen in flight), never for a while; the only
sleeps left pace polls that have a deadline.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError

from orchestrator.pipeline.driver import Pipeline
from orchestrator.pipeline.job import JobOutcome, JobRequest
from orchestrator.private_redis import PrivateRedisServer
from tests.support.pipeline_fixtures import (
    jobs_sharing_images,
    outcomes_by_id,
    png,
    running_pipeline,
)
from worker.actors.fault_injection import FaultInjection
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")


def pid_of(actor: Any) -> int:
    """The actor's process, waiting while Ray restarts it."""
    deadline = time.monotonic() + 120
    while True:
        try:
            pid: int = ray.get(actor.stats.remote()).pid
            return pid
        except (ActorUnavailableError, ActorDiedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the pace of a poll with a deadline, while Ray restarts it


def run_while(
    pipeline: Pipeline, jobs: list[JobRequest], disrupt: Callable[[], None]
) -> dict[str, JobOutcome]:
    """Run the jobs; call `disrupt` once the first of them has finished."""
    outcomes: list[JobOutcome] = []
    first_done = threading.Event()

    def disrupt_after_the_first() -> None:
        first_done.wait(120)
        disrupt()

    disrupted = threading.Thread(target=disrupt_after_the_first)
    disrupted.start()
    for outcome in pipeline.run(jobs):
        outcomes.append(outcome)
        first_done.set()
    disrupted.join()
    return outcomes_by_id(outcomes)


def sigkill(actor: Any) -> None:
    os.kill(pid_of(actor), signal.SIGKILL)


def restart(actor: Any) -> None:
    ray.kill(actor, no_restart=False)


@pytest.mark.parametrize("kill", [restart, sigkill], ids=["ray.kill", "SIGKILL"])
def test_killed_generator_loses_no_request(
    model_dir: Path, redis_server: PrivateRedisServer, kill: Callable[[Any], None]
) -> None:
    # Lengths that differ, so most requests are still decoding when the first one finishes.
    jobs = [
        dataclasses.replace(job, sampling=SamplingParams(max_new_tokens=10 + 12 * i))
        for i, job in enumerate(jobs_sharing_images(16))
    ]
    with running_pipeline(model_dir, redis_server.url, pool_num_generator_actors=2) as pipeline:
        victim = pipeline.pool.generators[0]
        pid_before = pid_of(victim)
        outcomes = run_while(pipeline, jobs, lambda: kill(victim))
        pid_after = pid_of(victim)  # Ray brought it back
        retries = pipeline.progress.retries
    assert set(outcomes) == {job.job_id for job in jobs}
    assert all(o.ok for o in outcomes.values()), [o.failure for o in outcomes.values()]
    assert retries > 0 and max(o.attempts for o in outcomes.values()) > 1
    assert pid_after != pid_before


def test_killed_vision_actor_loses_no_request(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    # Many distinct images of a good size: the one vision actor has a queue of work when it dies.
    jobs = [
        JobRequest(f"distinct-{i}", "Describe <image>.", (png(200 + i, 180, seed=i + 10),),
                   SamplingParams(4))
        for i in range(32)
    ]
    with running_pipeline(model_dir, redis_server.url) as pipeline:
        victim = pipeline.pool.vision[0]
        pid_before = pid_of(victim)

        def kill_once_vision_is_busy() -> None:
            # Several calls sent and not yet answered: the actor dies with a queue of work.
            deadline = time.monotonic() + 60
            while pipeline.vision.in_flight[0] < 4 and time.monotonic() < deadline:
                time.sleep(0.005)  # the pace of a poll with a deadline
            os.kill(pid_before, signal.SIGKILL)

        killer = threading.Thread(target=kill_once_vision_is_busy)
        killer.start()
        outcomes = outcomes_by_id(list(pipeline.run(jobs)))
        killer.join()
        pid_after = pid_of(victim)
        progress = pipeline.progress
    assert all(o.ok for o in outcomes.values()), [o.failure for o in outcomes.values()]
    assert len(outcomes) == 32
    assert pid_after != pid_before
    # Images whose vision call died with the actor were embedded again.
    assert progress.retries >= 1
    assert progress.vision_calls > 32


def test_poison_request_fails_after_bounded_attempts(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    jobs = jobs_sharing_images(8, max_new_tokens=8)
    poison = JobRequest("poison", "POISON <image>", jobs[0].images[:1], SamplingParams(4))
    with running_pipeline(
        model_dir,
        redis_server.url,
        max_attempts=3,
        pool_generator_faults=FaultInjection(crash_when_prompt_contains="POISON"),
    ) as pipeline:
        outcomes = outcomes_by_id(list(pipeline.run([poison, *jobs])))
    failure = outcomes["poison"].failure
    assert failure is not None and failure.error_type == "RequestGaveUpError"
    assert not failure.is_job_error and "3 attempts" in failure.message
    assert outcomes["poison"].attempts == 3
    assert all(outcomes[job.job_id].ok for job in jobs)


@pytest.mark.timeout(180)  # a job error must not wait out retries or restarts
def test_job_errors_are_not_retried(model_dir: Path, redis_server: PrivateRedisServer) -> None:
    too_long = JobRequest(
        "too-long", "<image>", jobs_sharing_images(1)[0].images[:1],
        SamplingParams(max_new_tokens=10**6),
    )
    with running_pipeline(model_dir, redis_server.url) as pipeline:
        pids = [pid_of(g) for g in pipeline.pool.generators]
        (outcome,) = pipeline.run([too_long])
        assert [pid_of(g) for g in pipeline.pool.generators] == pids
        assert pipeline.progress.retries == 0
    assert outcome.failure is not None and outcome.failure.error_type == "PromptTooLongError"
    assert outcome.attempts == 1
