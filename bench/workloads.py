"""What the engine and pipeline benchmarks share: sample images, request sets, a local cluster.

A `Workload` is a set of requests over a few distinct images. The pipeline benchmarks give it to
a `Pipeline` as `JobRequest`s; the in-process baselines embed each distinct image once and give
the same prompts to a transformers engine as `GenerationRequest`s.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from PIL import Image

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.allocator.handle import get_or_start_allocator
from orchestrator.pipeline.actor_pool import PoolConfig
from orchestrator.pipeline.config import PipelineConfig
from orchestrator.pipeline.driver import Pipeline
from orchestrator.pipeline.job import IMAGE_PLACEHOLDER, JobOutcome, JobRequest
from orchestrator.private_redis import PrivateRedisServer
from worker.engines import EngineConfig, ImageFeatures, LanguageEngine
from worker.engines.transformers.vision import TransformersVision
from worker.generation import GenerationRequest, GenerationResult
from worker.images.decoding import ImageLimits, decode_image
from worker.sampling_params import SamplingParams
from worker.span import Span
from worker.tiny.model import write_tiny_model
from worker.token_range import RESERVED_ID_BASE, TokenRange

# Distinct sizes, so images differ in row count too; the tiny Pixtral caps an edge at 256.
IMAGE_SIZES = [
    (256, 256), (224, 160), (192, 192), (160, 224), (256, 128),
    (128, 256), (208, 208), (240, 176), (176, 240), (144, 144),
]
WAIT_S = 600.0
# Ray gives each actor one torch thread (OMP_NUM_THREADS=1); engines in this process get the
# same, so that in-process and actor figures compare, and two threads do not fight over a
# shared core (which makes torch many times slower).
TORCH_THREADS = 1
TORCH_THREADS_HELP = "torch threads in this process (Ray gives each actor 1)"


@dataclass(frozen=True, slots=True)
class BenchRequest:
    request_id: str
    prompt: str  # one IMAGE_PLACEHOLDER per image
    image_indexes: tuple[int, ...]  # into Workload.images, in prompt order


@dataclass(frozen=True, slots=True)
class Workload:
    images: tuple[bytes, ...]  # encoded PNGs, all different
    requests: tuple[BenchRequest, ...]
    sampling: SamplingParams

    @property
    def num_image_uses(self) -> int:
        return sum(len(request.image_indexes) for request in self.requests)

    def jobs(self) -> list[JobRequest]:
        return [
            JobRequest(
                r.request_id, r.prompt, tuple(self.images[i] for i in r.image_indexes),
                self.sampling,
            )
            for r in self.requests
        ]


def sample_image(width: int, height: int, seed: int) -> bytes:
    """A PNG with structure, so that different seeds embed differently."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [(x * seed) % 256, (y * (seed + 3)) % 256, ((x + y) * 7 * seed) % 256]
    image = Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_images(count: int, first_seed: int = 1) -> tuple[bytes, ...]:
    return tuple(
        sample_image(*IMAGE_SIZES[i % len(IMAGE_SIZES)], seed=first_seed + i)
        for i in range(count)
    )


def shared_image_workload(
    num_requests: int,
    num_images: int,
    max_new_tokens: int,
    *,
    max_images_per_request: int = 2,
    variant: int = 0,
) -> Workload:
    """Request i shows image i mod num_images; every other request, a second image too.

    Variants have the same shape but images (and request IDs) of their own, so a repeated run
    finds no features cached from the one before.
    """
    requests = []
    for i in range(num_requests):
        indexes = [i % num_images]
        if max_images_per_request > 1 and num_images > 1 and i % 2:
            indexes.append((i * 3 + 1) % num_images)
            if indexes[1] == indexes[0]:
                indexes[1] = (indexes[0] + 1) % num_images
        placeholders = " and ".join([IMAGE_PLACEHOLDER] * len(indexes))
        prompt = f"[INST]Question {i}: what do {placeholders} show?[/INST]"
        requests.append(BenchRequest(f"v{variant}-r{i:04d}", prompt, tuple(indexes)))
    return Workload(
        sample_images(num_images, first_seed=1 + variant * num_images),
        tuple(requests),
        SamplingParams(max_new_tokens=max_new_tokens),
    )


def warm_up_workload(num_requests: int = 8) -> Workload:
    """Requests on small images of their own, run before any clock: the first forward passes
    happen, and the pipeline's image tasks find worker processes already started."""
    images = tuple(sample_image(64, 64, seed=900 + i) for i in range(num_requests))
    requests = tuple(
        BenchRequest(f"warm-up-{i}", f"[INST]{IMAGE_PLACEHOLDER}[/INST]", (i,))
        for i in range(num_requests)
    )
    return Workload(images, requests, SamplingParams(max_new_tokens=2))


# In process: the engines called directly.


class ImageTable:
    """Each image's features and span, made on first use: one tower run and one token range per
    image, however many requests show it, as the pipeline's dedup and allocator give."""

    def __init__(self, vision: TransformersVision, images: Sequence[bytes]) -> None:
        self.vision = vision
        self.images = images
        self._limits = ImageLimits()
        self._entries: dict[int, tuple[Span, ImageFeatures]] = {}
        self._next_id = RESERVED_ID_BASE

    def entry(self, index: int) -> tuple[Span, ImageFeatures]:
        if index not in self._entries:
            features = self.vision.embed(decode_image(self.images[index], self._limits))
            token_range = TokenRange(1, self._next_id, features.layout.num_rows)
            self._next_id = token_range.end
            span = Span(f"<$IMG_{index}$>", token_range, features.layout)
            self._entries[index] = (span, features)
        return self._entries[index]

    def request(self, request: BenchRequest, sampling: SamplingParams) -> GenerationRequest:
        prompt = request.prompt
        for index in request.image_indexes:
            prompt = prompt.replace(IMAGE_PLACEHOLDER, self.entry(index)[0].alias, 1)
        entries = [self.entry(i) for i in dict.fromkeys(request.image_indexes)]
        return GenerationRequest(
            request.request_id, prompt, tuple(span for span, _ in entries),
            tuple(features.rows for _, features in entries), sampling,
        )


def generation_requests(
    vision: TransformersVision, workload: Workload
) -> list[GenerationRequest]:
    """Every request of the workload, its images embedded (each once) before it returns."""
    table = ImageTable(vision, workload.images)
    return [table.request(request, workload.sampling) for request in workload.requests]


def embed_and_generate(
    vision: TransformersVision, engine: LanguageEngine, workload: Workload
) -> tuple[float, list[GenerationResult]]:
    """The workload as one process would run it without the pipeline: each request submitted
    as soon as its images are embedded, so the engine's thread decodes while this one embeds.
    The seconds from the encoded images to the last result, and the results."""
    started = time.perf_counter()
    table = ImageTable(vision, workload.images)
    futures = [engine.submit(table.request(r, workload.sampling)) for r in workload.requests]
    results = [future.result(WAIT_S) for future in futures]
    return time.perf_counter() - started, results


def generate_all(
    engine: LanguageEngine, requests: Sequence[GenerationRequest]
) -> tuple[float, list[GenerationResult]]:
    """Submit every request at once; the seconds until the last one finished, and the results."""
    started = time.perf_counter()
    futures = [engine.submit(request) for request in requests]
    results = [future.result(WAIT_S) for future in futures]
    return time.perf_counter() - started, results


def num_completion_tokens(results: Sequence[GenerationResult]) -> int:
    return sum(result.num_completion_tokens for result in results)


# Through the pipeline: a private Redis, a local Ray with logical GPUs, the tiny model.


@contextmanager
def tiny_model_dir() -> Iterator[Path]:
    """The tiny Pixtral in a scratch directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="vlmq-bench-") as scratch:
        model_dir = Path(scratch) / "tiny-pixtral"
        write_tiny_model(model_dir, "pixtral")
        yield model_dir


@dataclass(frozen=True, slots=True)
class LocalCluster:
    model_dir: Path
    redis_url: str

    def pipeline_config(
        self, pool: PoolConfig, *, dedup_images: bool = True, max_batch_size: int = 8
    ) -> PipelineConfig:
        """Fresh actor names and allocator namespace, so no run sees another's actors or IDs."""
        tag = uuid.uuid4().hex[:8]
        return PipelineConfig(
            engine=EngineConfig(str(self.model_dir), max_batch_size=max_batch_size),
            allocator=AllocatorConfig(redis_url=self.redis_url, namespace=f"bench-{tag}"),
            pool=dataclasses.replace(pool, name_prefix=f"bench-{tag}"),
            dedup_images=dedup_images,
        )


# Ray ends worker processes beyond its soft limit (one per CPU) once they idle a second; the
# pipeline's image tasks (half a CPU each) run on more workers than that, so by default a batch
# that follows a pause waits for some of them to start again.
KEEP_IDLE_WORKERS_HELP = (
    "keep Ray's idle worker processes (they are ended after 1 s idle by default), so image "
    "tasks never wait for a worker to start"
)
_KEEP_IDLE_WORKERS = {"idle_worker_killing_time_threshold_ms": 24 * 3600 * 1000}


@contextmanager
def local_cluster(
    model_dir: Path, *, keep_idle_workers: bool = False, num_cpus: int = 4, num_gpus: int = 2
) -> Iterator[LocalCluster]:
    """A private redis-server and a local Ray with logical GPUs, both stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="vlmq-bench-redis-") as redis_dir:
        server = PrivateRedisServer(Path(redis_dir))
        server.start()
        try:
            ray.init(
                num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                log_to_driver=False,
                _system_config=_KEEP_IDLE_WORKERS if keep_idle_workers else None,
            )
            try:
                yield LocalCluster(model_dir, server.url)
            finally:
                ray.shutdown()
        finally:
            server.stop()


@contextmanager
def started_pipeline(config: PipelineConfig) -> Iterator[Pipeline]:
    """A pipeline whose actors are up and have run a warm-up batch: ready to be timed."""
    pipeline = Pipeline(config)
    try:
        pipeline.start()
        run_all(pipeline, warm_up_workload().jobs())
        yield pipeline
    finally:
        pipeline.close()
        ray.kill(get_or_start_allocator(config.allocator), no_restart=True)


def run_all(pipeline: Pipeline, jobs: Sequence[JobRequest]) -> list[JobOutcome]:
    outcomes = list(pipeline.run(jobs))
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(outcomes)} jobs failed, e.g. {failed[0]}")
    return outcomes


def timed_run(pipeline: Pipeline, jobs: Sequence[JobRequest]) -> tuple[float, list[JobOutcome]]:
    started = time.perf_counter()
    outcomes = run_all(pipeline, jobs)
    return time.perf_counter() - started, outcomes


def outcome_tokens(outcomes: Sequence[JobOutcome]) -> int:
    return sum(o.result.num_completion_tokens for o in outcomes if o.result is not None)
