"""`Pipeline.submit`: jobs one at a time from any thread, each answered with a future of its
outcome, on a local Ray with logical GPUs and the tiny model.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
import ray

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.pipeline.config import PipelineConfig
from orchestrator.pipeline.driver import Pipeline
from orchestrator.pipeline.errors import PipelineClosedError
from orchestrator.pipeline.job import JobOutcome, JobRequest
from orchestrator.private_redis import PrivateRedisServer
from tests.support.pipeline_fixtures import IMAGES, jobs_sharing_images, running_pipeline
from tests.support.waiting import wait_for
from worker.engines import EngineConfig
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")

TIMEOUT_S = 120


@pytest.mark.timeout(300)
def test_jobs_submitted_from_many_threads_each_get_their_own_outcome_once(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    batches = [jobs_sharing_images(6, prefix=f"thread{t}") for t in range(3)]
    bad = JobRequest("bad", "two <image> <image>", (IMAGES[0],))  # one image short
    batches[1].insert(3, bad)
    run_jobs = jobs_sharing_images(6, prefix="run")
    futures: dict[str, Future[JobOutcome]] = {}
    resolutions: dict[str, int] = {}
    run_outcomes: list[JobOutcome] = []
    lock = threading.Lock()

    def count(job_id: str, _: Future[JobOutcome]) -> None:
        with lock:
            resolutions[job_id] = resolutions.get(job_id, 0) + 1

    def submit_all(jobs: list[JobRequest]) -> None:
        for i, job in enumerate(jobs):
            future = pipeline.submit(job)
            future.add_done_callback(functools.partial(count, job.job_id))
            with lock:
                futures[job.job_id] = future
            if i % 2:  # the next ones go in while the earlier ones finish
                future.result(timeout=TIMEOUT_S)

    with running_pipeline(model_dir, redis_server.url) as pipeline:
        threads = [threading.Thread(target=submit_all, args=(b,)) for b in batches]
        threads.append(threading.Thread(target=lambda: run_outcomes.extend(pipeline.run(run_jobs))))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT_S)
        outcomes = {job_id: f.result(timeout=TIMEOUT_S) for job_id, f in futures.items()}
        assert pipeline.in_flight == 0  # every outcome delivered: nothing is left in flight
        progress = pipeline.progress
    submitted = [job for batch in batches for job in batch]
    assert set(outcomes) == {job.job_id for job in submitted}
    assert resolutions == {job.job_id: 1 for job in submitted}
    assert sorted(o.job_id for o in run_outcomes) == sorted(job.job_id for job in run_jobs)
    outcomes |= {o.job_id: o for o in run_outcomes}
    for job in [*submitted, *run_jobs]:
        outcome = outcomes[job.job_id]
        assert outcome.job_id == job.job_id  # the future has its own job's outcome
        if job is bad:
            assert outcome.failure is not None
            assert outcome.failure.error_type == "InvalidRequestError"
            assert "2 <image> placeholders for 1 images" in outcome.failure.message
        else:
            assert outcome.ok, outcome.failure
            assert outcome.result is not None
            assert outcome.result.request_id == job.job_id
            assert outcome.result.num_completion_tokens == job.sampling.max_new_tokens
    num_jobs = len(submitted) + len(run_jobs)
    assert (progress.submitted, progress.succeeded, progress.failed) == (
        num_jobs, num_jobs - 1, 1
    )


@pytest.mark.timeout(300)
def test_a_job_id_in_flight_is_refused_and_callbacks_may_submit(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    job = JobRequest("twice", "Describe <image>.", (IMAGES[0],), SamplingParams(5))
    chained: list[Future[JobOutcome]] = []

    def submit_next(outcome: Future[JobOutcome]) -> None:
        # Runs on the pipeline's own thread: a submit that waited on it would hang here.
        if len(chained) < 3:
            follow = pipeline.submit(JobRequest(f"chained-{len(chained)}", "Hi <image>",
                                                (IMAGES[1],), SamplingParams(3)))
            chained.append(follow)
            follow.add_done_callback(submit_next)

    with running_pipeline(model_dir, redis_server.url) as pipeline:
        first, second = pipeline.submit(job), pipeline.submit(job)
        refused = second.result(timeout=TIMEOUT_S)
        done = first.result(timeout=TIMEOUT_S)
        again = pipeline.submit(job).result(timeout=TIMEOUT_S)  # no longer in flight: taken
        pipeline.submit(job).add_done_callback(submit_next)
        wait_for(lambda: len(chained) == 3 and chained[-1].done(), "three chained jobs done")
        chain = [f.result() for f in chained]
    assert refused.failure is not None and refused.job_id == "twice"
    assert refused.failure.error_type == "InvalidRequestError"
    assert refused.failure.message == "job twice is already in flight"
    assert done.ok and again.ok
    assert done.result is not None and again.result is not None
    assert again.result.completion_ids == done.result.completion_ids
    assert [o.job_id for o in chain] == ["chained-0", "chained-1", "chained-2"]
    assert all(o.ok for o in chain), chain


@pytest.mark.timeout(300)
def test_jobs_over_capacity_wait_inside_and_close_ends_every_one(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    jobs = jobs_sharing_images(7, prefix="held")
    with running_pipeline(
        model_dir, redis_server.url, pool_num_generator_actors=1, max_in_flight_per_generator=1
    ) as pipeline:
        assert pipeline.capacity == 2
        # A stopped generator process: requests sent to it never finish on their own.
        os.kill(ray.get(pipeline.pool.generators[0].stats.remote()).pid, signal.SIGSTOP)
        futures = [pipeline.submit(job) for job in jobs]  # each returns at once
        assert pipeline.in_flight == 7
        wait_for(lambda: pipeline.progress.waiting_for_room == 5, "five jobs waiting for room")
        wait_for(lambda: pipeline.router.in_flight[0] == 1, "a request on the generator")
        assert not any(f.done() for f in futures)
        pipeline.close()
        assert all(f.done() for f in futures), "close() returned before every outcome"
        with pytest.raises(PipelineClosedError):
            pipeline.submit(jobs[0])
        assert pipeline.in_flight == 0
    for job, future in zip(jobs, futures, strict=True):
        outcome = future.result()
        assert outcome.job_id == job.job_id
        assert outcome.failure is not None and not outcome.failure.is_job_error
        assert outcome.failure.error_type == "PipelineClosedError"


def test_submit_before_start_raises(model_dir: Path, redis_server: PrivateRedisServer) -> None:
    config = PipelineConfig(
        engine=EngineConfig(str(model_dir)),
        allocator=AllocatorConfig(redis_url=redis_server.url, namespace="never-started"),
    )
    pipeline = Pipeline(config)
    with pytest.raises(PipelineClosedError):
        pipeline.submit(jobs_sharing_images(1)[0])
    assert pipeline.cancel("job-0") is False
    assert pipeline.in_flight == 0
    pipeline.close()
