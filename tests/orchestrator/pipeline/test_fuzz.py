"""A seeded fuzz of `Pipeline.run`: good jobs mixed with every kind of bad one, then a check of
the whole history. Every job ends once; a bad job fails alone, typed as its own fault, before
any retry; the good jobs around it succeed; no actor restarts; the generators answer after."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray

from orchestrator.pipeline.job import JobRequest, job_id_of
from orchestrator.private_redis import PrivateRedisServer
from tests.support.bad_jobs import KINDS, BadJob, bad_job, encoded
from tests.support.pipeline_fixtures import IMAGES, running_pipeline
from worker.actors.generator import GenerationCall
from worker.generation import GenerationResult
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")

SEED = 8
NUM_GOOD = 30
BAD_PER_KIND = 2
GOOD_IMAGES = [*IMAGES, *(encoded(name, 20 + i) for i, name in enumerate(("JPEG", "WEBP", "GIF")))]
# Words for prompts: nothing that reads as a placeholder or an alias, some of it beyond ASCII.
WORDS = ["what", "is", "in", "the", "picture", "describe", "colour", "?", "\n",
         "caf\u00e9", "\u4e2d\u6587", "\U0001f600"]


def good_job(job_id: str, rng: random.Random) -> JobRequest:
    images = tuple(rng.choice(GOOD_IMAGES) for _ in range(rng.randrange(3)))
    words = [rng.choice(WORDS) for _ in range(rng.randrange(1, 12))]
    for _ in images:
        words.insert(rng.randrange(len(words) + 1), "<image>")
    sampling = rng.choice([
        SamplingParams(rng.randrange(1, 5)),
        SamplingParams(rng.randrange(1, 5), temperature=0.8, top_p=0.9, seed=rng.randrange(99)),
        SamplingParams(3, temperature=1.0, top_k=5, stop_strings=("\n",)),
    ])
    return JobRequest(job_id, " ".join(words), images, sampling)


def corpus(seed: int) -> tuple[list[JobRequest], list[BadJob]]:
    rng = random.Random(seed)
    good = [good_job(f"good-{n}", rng) for n in range(NUM_GOOD)]
    bad = [bad_job(kind, f"bad-{kind}-{n}", rng) for kind in KINDS for n in range(BAD_PER_KIND)]
    return good, bad


@contextmanager
def ray_unhandled_errors() -> Iterator[list[str]]:
    """What Ray logs on this driver about error objects nobody read (a task that raised)."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Unhandled error" in record.getMessage():
                seen.append(record.getMessage())

    logger = logging.getLogger("ray._private.worker")
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def actor_pids(pipeline: object) -> dict[str, int]:
    pool = pipeline.pool  # type: ignore[attr-defined]
    actors = [*pool.vision, *pool.generators]
    return {s.name: s.pid for s in ray.get([actor.stats.remote() for actor in actors])}


@pytest.mark.timeout(240)
def test_bad_jobs_among_good_ones_fail_alone_typed_and_at_once(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    good, bad = corpus(SEED)
    jobs: list[JobRequest] = [*good, *(b.job for b in bad)]
    random.Random(SEED + 1).shuffle(jobs)
    with ray_unhandled_errors() as unhandled, running_pipeline(
        model_dir, redis_server.url
    ) as pipeline:
        pids_before = actor_pids(pipeline)
        outcomes = list(pipeline.run(jobs))
        progress = dataclasses.replace(pipeline.progress)  # before the runs after
        pids_after = actor_pids(pipeline)
        # The generators still answer, each of them, and so does the pipeline.
        after: list[GenerationResult] = ray.get([
            generator.generate.remote(GenerationCall(f"after-{i}", "hello", (), SamplingParams(3)))
            for i, generator in enumerate(pipeline.pool.generators)
        ])
        last = list(pipeline.run([good_job("after", random.Random(0)), good[0]]))

    # Every job ended exactly once, named as it was sent.
    ids = [job_id_of(job) for job in jobs]
    assert len(set(ids)) == len(jobs)
    assert sorted(o.job_id for o in outcomes) == sorted(ids)
    by_id = {o.job_id: o for o in outcomes}
    for b in bad:
        outcome = by_id[job_id_of(b.job)]
        failure = outcome.failure
        assert failure is not None, (b.kind, outcome)
        assert (failure.error_type, failure.is_job_error) == (b.error_type, True), (b.kind, failure)
        assert failure.message and failure.message.encode("utf-8")
        assert outcome.attempts <= 1, b.kind  # refused before generation, or by it: never again
    failed_good = [(j.job_id, by_id[j.job_id].failure) for j in good if not by_id[j.job_id].ok]
    assert not failed_good
    assert all(by_id[j.job_id].attempts == 1 for j in good)
    assert (progress.submitted, progress.succeeded, progress.failed) == (
        len(jobs), len(good), len(bad)
    )
    assert progress.retries == 0
    assert pids_after == pids_before  # no actor restarted
    assert not unhandled  # no Ray task raised and left an error nobody read
    assert all(r.num_completion_tokens >= 1 for r in after)
    assert all(o.ok for o in last), last


@pytest.mark.timeout(120)
def test_objects_that_are_not_jobs_each_get_a_failed_outcome(
    model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    things: list[object] = [None, {"job_id": "a-dict", "prompt": "hi"}, "a prompt", b"\x89PNG"]
    good = good_job("good", random.Random(1))
    with running_pipeline(model_dir, redis_server.url) as pipeline:
        outcomes = list(pipeline.run([*things, good]))  # type: ignore[list-item]
    by_id = {o.job_id: o for o in outcomes}
    assert sorted(by_id) == sorted(job_id_of(t) for t in [*things, good])
    for thing in things:
        failure = by_id[job_id_of(thing)].failure
        assert failure is not None and failure.is_job_error
        assert failure.error_type == "InvalidRequestError"
    assert by_id["good"].ok
