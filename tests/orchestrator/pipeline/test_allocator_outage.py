"""A Redis outage is the system's problem: jobs wait for it (visibly), then go on; a deadline
bounds the wait with a typed system error.

The test's own redis-server is killed and started again on the same port with its data (it
logs every write), while jobs run on real local Ray. Each lease costs a reservation in Redis
(`chunk_size == lease_size`), and a lease holds one image's range exactly, so every new image
needs Redis while an image already seen needs nothing from it.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.pipeline.job import JobOutcome, JobRequest
from orchestrator.private_redis import PrivateRedisServer
from tests.support.pipeline_fixtures import outcomes_by_id, png, running_pipeline
from tests.support.waiting import wait_for
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.images.visual_tokens import visual_layout
from worker.images.vlm_family import detect_family, read_image_params
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")

WIDTH, HEIGHT = 48, 40  # every image of these tests: one size, so one number of rows


def rows_per_image(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    params = read_image_params(model_dir, detect_family(config))
    pieces = HFTextTokenizer.from_model_dir(model_dir).special_pieces
    return visual_layout(WIDTH, HEIGHT, params).span_layout(pieces).num_rows


def one_lease_per_image(model_dir: Path, redis_url: str) -> AllocatorConfig:
    rows = rows_per_image(model_dir)
    return AllocatorConfig(
        redis_url=redis_url,
        namespace=f"outage-{uuid.uuid4().hex[:6]}",
        chunk_size=rows,
        lease_size=rows,
        redis_retry_seconds=0.3,  # the actor answers "unavailable" quickly; the pipeline waits
    )


def job(job_id: str, seed: int) -> JobRequest:
    return JobRequest(job_id, "Describe <image>.", (png(WIDTH, HEIGHT, seed=seed),),
                      SamplingParams(4))


@pytest.mark.timeout(240)
def test_jobs_wait_out_a_redis_outage_and_go_on_when_it_is_back(
    model_dir: Path, tmp_path: Path
) -> None:
    redis_server = PrivateRedisServer(tmp_path)
    redis_server.start()
    try:
        with running_pipeline(
            model_dir,
            redis_server.url,
            allocator=one_lease_per_image(model_dir, redis_server.url),
            allocator_outage_timeout_s=120,
        ) as pipeline:
            (warm,) = pipeline.run([job("seen", seed=1)])
            assert warm.ok, warm.failure
            redis_server.stop()
            outcomes: list[JobOutcome] = []
            consumer = threading.Thread(
                target=lambda: outcomes.extend(
                    pipeline.run([job("new", seed=2), job("seen-again", seed=1)])
                ),
                daemon=True,
            )
            consumer.start()
            # The new image waits for Redis, and says so; the seen one needs no new IDs.
            wait_for(lambda: pipeline.progress.waiting_for_allocator == 1, "a job waits")
            wait_for(lambda: any(o.job_id == "seen-again" for o in outcomes), "seen-again done")
            assert pipeline.progress.waiting_for_allocator == 1
            assert [o.job_id for o in outcomes] == ["seen-again"] and outcomes[0].ok
            redis_server.start()  # same port, same data
            consumer.join(120)
            assert not consumer.is_alive()
            waiting_after = pipeline.progress.waiting_for_allocator
    finally:
        redis_server.stop()
    by_id = outcomes_by_id(outcomes)
    assert by_id["new"].ok, by_id["new"].failure
    assert waiting_after == 0


@pytest.mark.timeout(240)
def test_an_outage_past_its_deadline_fails_jobs_with_a_typed_system_error(
    model_dir: Path, tmp_path: Path
) -> None:
    redis_server = PrivateRedisServer(tmp_path)
    redis_server.start()
    waiting_seen = threading.Event()
    try:
        with running_pipeline(
            model_dir,
            redis_server.url,
            allocator=one_lease_per_image(model_dir, redis_server.url),
            allocator_outage_timeout_s=3.0,
        ) as pipeline:
            (warm,) = pipeline.run([job("seen", seed=1)])
            assert warm.ok, warm.failure
            redis_server.stop()

            def watch() -> None:
                wait_for(lambda: pipeline.progress.waiting_for_allocator == 1, "a job waits")
                waiting_seen.set()

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            (outcome,) = pipeline.run([job("new", seed=2)])
            waiting_after = pipeline.progress.waiting_for_allocator
    finally:
        redis_server.stop()
    assert waiting_seen.is_set()  # it waited, visibly, before giving up
    assert outcome.failure is not None
    assert outcome.failure.error_type == "AllocatorStateUnavailableError"
    assert not outcome.failure.is_job_error
    assert "allocator_outage_timeout_s" in outcome.failure.message
    assert waiting_after == 0
