"""Pipelines on the session's local Ray, with the tiny Pixtral model and sample images."""

from __future__ import annotations

import dataclasses
import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.pipeline.actor_pool import PoolConfig
from orchestrator.pipeline.config import PipelineConfig
from orchestrator.pipeline.driver import Pipeline
from orchestrator.pipeline.job import JobOutcome, JobRequest
from worker.engines import EngineConfig
from worker.sampling_params import SamplingParams
from worker.tiny.model import write_tiny_model


def png(width: int, height: int, seed: int) -> bytes:
    image = Image.new("RGB", (width, height))
    image.putdata(
        [((x * seed) % 256, (y * (seed + 2)) % 256, (x + y) % 256)
         for y in range(height) for x in range(width)]
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = [png(40 + 8 * i, 30 + 6 * i, seed=i + 1) for i in range(4)]


def jobs_sharing_images(
    count: int, max_new_tokens: int = 6, prefix: str = "job"
) -> list[JobRequest]:
    """Jobs of one or two of four images each, so images repeat across jobs."""
    jobs = []
    for i in range(count):
        if i % 3:
            prompt = f"Q{i}: what is <image>?"
            images: tuple[bytes, ...] = (IMAGES[i % 4],)
        else:
            prompt = f"Q{i}: compare <image> and <image>."
            images = (IMAGES[i % 4], IMAGES[(i + 1) % 4])
        jobs.append(JobRequest(f"{prefix}-{i}", prompt, images, SamplingParams(max_new_tokens)))
    return jobs


def pipeline_model_dir(base: Path) -> Path:
    model_dir = base / "pipeline-tiny-pixtral"
    if not (model_dir / "config.json").exists():
        write_tiny_model(model_dir, "pixtral")
    return model_dir


@contextmanager
def running_pipeline(
    model_dir: Path, redis_url: str, **options: object
) -> Iterator[Pipeline]:
    """A started pipeline with actors and allocator of its own; closed afterwards."""
    tag = uuid.uuid4().hex[:6]
    pool_options = {k[5:]: v for k, v in options.items() if k.startswith("pool_")}
    config = PipelineConfig(
        engine=EngineConfig(str(model_dir)),
        allocator=AllocatorConfig(redis_url=redis_url, namespace=f"pipe-{tag}"),
        pool=PoolConfig(name_prefix=f"pipe-{tag}", **pool_options),  # type: ignore[arg-type]
    )
    other = {k: v for k, v in options.items() if not k.startswith("pool_")}
    pipeline = Pipeline(dataclasses.replace(config, **other))  # type: ignore[arg-type]
    pipeline.start()
    try:
        yield pipeline
    finally:
        pipeline.close()


def outcomes_by_id(outcomes: list[JobOutcome]) -> dict[str, JobOutcome]:
    by_id = {outcome.job_id: outcome for outcome in outcomes}
    assert len(by_id) == len(outcomes), "every job must end exactly once"
    return by_id
