"""`Pipeline.cancel`: a job in flight ends at once with `JobCancelledError`, wherever it is
(waiting for room, for a generator, or generating), and a generating one is aborted in its
generator's engine, on a local Ray with logical GPUs and the tiny model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from orchestrator.pipeline.job import JobOutcome, JobRequest
from orchestrator.private_redis import PrivateRedisServer
from tests.orchestrator.pipeline.test_fuzz import ray_unhandled_errors
from tests.support.pipeline_fixtures import IMAGES, running_pipeline
from tests.support.waiting import wait_for
from tests.worker.actors.test_actors import engine_counts
from worker.actors.stats import ActorStats
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")

TIMEOUT_S = 120


def job(job_id: str, max_new_tokens: int, image: int = 0) -> JobRequest:
    return JobRequest(job_id, "Describe <image>.", (IMAGES[image],), SamplingParams(max_new_tokens))


def assert_cancelled(outcome: JobOutcome, job_id: str, attempts: int) -> None:
    assert outcome.job_id == job_id
    assert outcome.failure is not None, outcome
    assert outcome.failure.error_type == "JobCancelledError"
    assert not outcome.failure.is_job_error
    assert outcome.failure.message == f"job {job_id} was cancelled"
    assert outcome.attempts == attempts


@pytest.mark.timeout(300)
def test_jobs_are_cancelled_wherever_they_are_and_the_generator_goes_on(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    with ray_unhandled_errors() as unhandled, running_pipeline(
        model_dir, redis_server.url, pool_num_generator_actors=1, max_in_flight_per_generator=1
    ) as pipeline:
        generator = pipeline.pool.generators[0]

        def counts() -> tuple[int, int]:  # in the generator's engine: running, aborted
            result: tuple[int, int] = ray.get(generator.__ray_call__.remote(engine_counts))
            return result

        def stats() -> ActorStats:
            result: ActorStats = ray.get(generator.stats.remote(), timeout=60)
            return result

        # Room for two jobs, one request per generator: the first generates (far longer than
        # the test lasts), the second waits for the generator, the third for room.
        generating = pipeline.submit(job("generating", 2000))
        wait_for(lambda: counts() == (1, 0), "the first job in the engine's batch")
        waiting = pipeline.submit(job("waiting", 4, image=1))
        queued = pipeline.submit(job("queued", 4, image=2))
        wait_for(lambda: pipeline.router.num_waiting == 1, "a job waiting for the generator")
        wait_for(lambda: pipeline.progress.waiting_for_room == 1, "a job waiting for room")
        assert pipeline.in_flight == 3

        assert pipeline.cancel("queued") is True
        assert_cancelled(queued.result(timeout=TIMEOUT_S), "queued", attempts=0)
        assert pipeline.cancel("waiting") is True
        assert_cancelled(waiting.result(timeout=TIMEOUT_S), "waiting", attempts=1)
        assert pipeline.router.num_waiting == 0
        assert counts() == (1, 0)  # neither reached the generator

        assert pipeline.cancel("generating") is True
        assert_cancelled(generating.result(timeout=TIMEOUT_S), "generating", attempts=1)
        wait_for(lambda: stats().num_active == 0, "the generate call ended")
        wait_for(lambda: counts() == (0, 1), "the request aborted in the engine, its slot free")
        # Cancelled in Ray: the call neither completed nor failed in the actor.
        assert (stats().num_completed, stats().num_failed) == (0, 0)
        assert pipeline.router.in_flight == [0]
        assert pipeline.in_flight == 0

        after = pipeline.submit(job("after", 4)).result(timeout=TIMEOUT_S)
        assert after.ok and after.result is not None
        assert after.result.num_completion_tokens == 4
        assert pipeline.cancel("after") is False  # finished
        assert pipeline.cancel("generating") is False  # finished, as cancelled
        assert pipeline.cancel("nobody") is False  # never submitted
        assert after.ok
        progress = pipeline.progress
    assert (progress.submitted, progress.succeeded, progress.failed) == (4, 1, 3)
    assert progress.waiting_for_room == 0
    assert not unhandled  # the cancelled call's error was read, not left for Ray to report
