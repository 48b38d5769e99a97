"""The pipeline on a local Ray with logical GPUs and the tiny model: results, dedup,
backpressure, routing, and bad input. Where features live (the object store, not the driver)
is tested with features of real size in test_features_stay_off_driver.py: these are ~4 KiB,
which Ray inlines into the driver."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from orchestrator.pipeline.job import JobRequest
from orchestrator.private_redis import PrivateRedisServer
from tests.support.driver_objects import features_received_here
from tests.support.pipeline_fixtures import (
    IMAGES,
    jobs_sharing_images,
    outcomes_by_id,
    png,
    running_pipeline,
)
from worker.actors.stats import ActorStats
from worker.generation import FinishReason
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")


def generator_stats(pipeline: object) -> list[ActorStats]:
    generators = pipeline.pool.generators  # type: ignore[attr-defined]
    stats: list[ActorStats] = ray.get([g.stats.remote() for g in generators])
    return stats


def test_jobs_complete_once_with_each_image_embedded_once(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    jobs = jobs_sharing_images(24)
    with features_received_here() as driver_received, running_pipeline(
        model_dir, redis_server.url
    ) as pipeline:
        outcomes = outcomes_by_id(list(pipeline.run(jobs)))
        stats = generator_stats(pipeline)
        progress = pipeline.progress
    assert set(outcomes) == {job.job_id for job in jobs}
    for job in jobs:
        outcome = outcomes[job.job_id]
        assert outcome.ok and outcome.attempts == 1, outcome.failure
        assert outcome.result is not None
        assert outcome.result.finish_reason is FinishReason.LENGTH
        assert outcome.result.num_completion_tokens == job.sampling.max_new_tokens
    assert progress.vision_calls == 4  # four distinct images among 32 image uses
    assert progress.feature_reuses == 32 - 4
    # Features went from vision actors to generators, which unpickled them; the driver did not
    # (features this small pass through it inline, unread).
    assert driver_received.count == 0
    assert sum(s.num_features_received for s in stats) >= 32
    assert sum(s.num_completed for s in stats) == 24
    # Dynamic batching end to end: a generator had several requests at once.
    assert max(s.max_active for s in stats) > 1


def test_the_same_image_gets_the_same_tokens_on_any_generator(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    twins = [JobRequest(f"twin-{i}", "Describe <image>.", (IMAGES[0],), SamplingParams(5))
             for i in range(6)]
    # One request per generator at a time: the twins, which wait together for their one vision
    # call, cannot all go to the generator that holds their image.
    with running_pipeline(
        model_dir, redis_server.url, max_in_flight_per_generator=1
    ) as pipeline:
        outcomes = list(pipeline.run(twins))
        stats = generator_stats(pipeline)
    assert len(outcomes) == 6 and all(o.ok for o in outcomes), outcomes
    assert all(s.num_completed > 0 for s in stats), stats  # every generator ran some
    # Greedy decoding of the same prompt and image: identical, whichever generator ran it.
    assert len({o.result.completion_ids for o in outcomes if o.result}) == 1
    assert len({o.result.num_prompt_tokens for o in outcomes if o.result}) == 1


def test_backpressure_bounds_requests_per_generator(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    jobs = jobs_sharing_images(30, max_new_tokens=10)
    with running_pipeline(
        model_dir, redis_server.url, max_in_flight_per_generator=2
    ) as pipeline:
        outcomes = list(pipeline.run(jobs))
        router = pipeline.router
        stats = generator_stats(pipeline)
    assert all(o.ok for o in outcomes)
    assert router.max_in_flight_seen == 2
    assert max(s.max_active for s in stats) <= 2
    assert router.num_affine > 0  # requests that share an image went where it had been


def test_bad_jobs_fail_alone_with_typed_errors(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    good = jobs_sharing_images(4, prefix="good")
    bad = [
        JobRequest("corrupt", "<image>", (IMAGES[0][:80],)),
        JobRequest("not-an-image", "<image>", (b"hello, I am plain text",)),
        JobRequest("svg", "<image>", (b"<svg xmlns='http://www.w3.org/2000/svg'/>",)),
        JobRequest("empty", "<image>", (b"",)),
        JobRequest("missing-image", "look at <image> and <image>", (IMAGES[1],)),
        JobRequest("extra-image", "look", (IMAGES[1],)),
        JobRequest("too-many", "<image>" * 17, (IMAGES[2],) * 17),
        JobRequest("oversized", "<image>", (b"\x89PNG" + b"\0" * (21 * 2**20),)),
        JobRequest("tiny-side", "<image>", (png(1, 3000, seed=5),)),
        JobRequest("too-long", "<image>", (IMAGES[3],), SamplingParams(max_new_tokens=10**6)),
    ]
    with running_pipeline(model_dir, redis_server.url) as pipeline:
        pids_before = {s.pid for s in generator_stats(pipeline)}
        outcomes = outcomes_by_id(list(pipeline.run([*bad[:5], *good, *bad[5:]])))
        pids_after = {s.pid for s in generator_stats(pipeline)}
    expected_errors = {
        "corrupt": "CorruptImageError",
        "not-an-image": "UnsupportedImageFormatError",
        "svg": "UnsupportedImageFormatError",
        "empty": "UnsupportedImageFormatError",
        "missing-image": "InvalidRequestError",
        "extra-image": "InvalidRequestError",
        "too-many": "TooManyImagesError",
        "oversized": "ImageTooLargeError",
        "tiny-side": "UnsupportedImageShapeError",
        "too-long": "PromptTooLongError",
    }
    for job_id, error_type in expected_errors.items():
        failure = outcomes[job_id].failure
        assert failure is not None and failure.error_type == error_type, (job_id, failure)
        assert failure.is_job_error and failure.message
        assert outcomes[job_id].attempts <= 1  # never retried
    assert all(outcomes[job.job_id].ok for job in good)
    assert pids_after == pids_before  # bad input never cost a generator its process
