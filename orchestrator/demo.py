"""`vlmq demo`: the bundled sample batch through Redis, `serve` and the Pipeline, on one machine.

Unless given a Redis URL, it starts a private redis-server (loopback, a free port, a password,
append-only), a local Ray with two logical GPUs, and writes a tiny random-weight Pixtral. A
queue server (`vlmq serve`'s, on a thread here) runs a Pipeline of one vision actor and two
generator actors, each on half a GPU. The client submits the 24 sample jobs as one batch over
Redis and prints each result as it comes back: the images are shared between jobs, so the
vision tower runs once per distinct image; one job carries a corrupt image and fails alone
on the server with a typed error, and one has fewer placeholders than images and is refused
by the client before it is sent. Then a summary by state, vision calls against distinct
images, and the throughput from the first submit to the last result.

The sample images (`sample_images/`) were drawn with Pillow for this demo.
"""

from __future__ import annotations

import secrets
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import ray

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.pipeline.actor_pool import PoolConfig
from orchestrator.pipeline.config import PipelineConfig
from orchestrator.pipeline.driver import Pipeline, Progress
from orchestrator.pipeline.job import JobRequest
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Batch, BatchCounts, Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.errors import QueueError
from orchestrator.queue.schema import JobResult, JobSpec
from orchestrator.queue.serve import ServerThread
from orchestrator.queue.states import JobState
from orchestrator.redis_connection import RedisSettings
from worker.actors.stats import ActorStats
from worker.engines import EngineConfig
from worker.errors import JobError
from worker.sampling_params import SamplingParams
from worker.tiny.model import write_tiny_model

DEMO_QUEUE = "demo"

SAMPLE_DIR = Path(__file__).parent / "sample_images"
GOOD_IMAGES = ("sunset.png", "shapes.jpg", "chart.webp", "receipt.gif")
CORRUPT_IMAGE = "corrupt.jpg"  # a JPEG cut off after 400 bytes

QUESTIONS = (
    ("What is in this picture? <image>", ("sunset.png",)),
    ("Compare <image> with <image>.", ("shapes.jpg", "chart.webp")),
    ("Read the total: <image>", ("receipt.gif",)),
    ("Which bar is the tallest?\n<image>", ("chart.webp",)),
    ("<image><image><image> Which one is a receipt?", ("sunset.png", "shapes.jpg", "receipt.gif")),
    ("How many shapes are there in <image>?", ("shapes.jpg",)),
    ("Is the sun rising or setting? <image> Answer in one word.", ("sunset.png",)),
    ("Describe <image> and <image> in one sentence each.", ("receipt.gif", "sunset.png")),
)
NUM_GOOD_JOBS = 22
SAMPLING = SamplingParams(max_new_tokens=16)


def sample_batch() -> list[JobRequest]:
    """22 good jobs cycling through QUESTIONS, then one corrupt image and one count mismatch."""
    images = {name: (SAMPLE_DIR / name).read_bytes() for name in (*GOOD_IMAGES, CORRUPT_IMAGE)}

    def job(job_id: str, question: str, names: tuple[str, ...]) -> JobRequest:
        prompt = f"[INST]{question}[/INST]"
        return JobRequest(job_id, prompt, tuple(images[name] for name in names), SAMPLING)

    batch = [job(f"q{i:02d}", *QUESTIONS[i % len(QUESTIONS)]) for i in range(NUM_GOOD_JOBS)]
    batch.append(job("corrupt", "What colour dominates <image>?", (CORRUPT_IMAGE,)))
    batch.append(job("mismatch", "Compare <image> with the other one.", GOOD_IMAGES[:2]))
    return batch


@dataclass(frozen=True, slots=True)
class Refusal:
    job_id: str
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class DemoRun:
    results: list[JobResult]  # in the order they came back
    refused: list[Refusal]  # refused by the client before they were sent
    counts: BatchCounts
    progress: Progress
    actors: list[ActorStats]
    run_s: float  # from the first submit to the last result


def run_demo(redis_url: str | RedisSettings | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="vlmq-demo-") as scratch:
        server = None
        if redis_url is None:
            server = PrivateRedisServer(Path(scratch), password=secrets.token_hex(16))
            server.start()
            redis_url = server.url
        # Each actor holds one logical CPU while it lives; the fourth runs the image tasks.
        ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
        try:
            model_dir = Path(scratch) / "tiny-pixtral"
            write_tiny_model(model_dir, "pixtral")
            namespace = f"demo-{uuid.uuid4().hex[:6]}"
            demo = run_batch(pipeline_config(model_dir, redis_url, namespace),
                             QueueConfig(redis_url, DEMO_QUEUE, namespace), sample_batch())
        finally:
            ray.shutdown()
            if server is not None:
                server.stop()
    print_summary(demo)
    return 0


def pipeline_config(
    model_dir: Path, redis_url: str | RedisSettings, namespace: str
) -> PipelineConfig:
    return PipelineConfig(
        engine=EngineConfig(str(model_dir)),
        allocator=AllocatorConfig(redis_url, namespace=namespace),
        pool=PoolConfig(
            num_vision_actors=1,
            num_generator_actors=2,
            gpus_per_vision_actor=0.5,
            gpus_per_generator_actor=0.5,
            name_prefix="demo",
        ),
    )


def run_batch(config: PipelineConfig, queue: QueueConfig, jobs: list[JobRequest]) -> DemoRun:
    print(
        f"vlmq demo: {len(jobs)} jobs through Redis; 1 vision + 2 generator actors on 2 "
        "logical GPUs; tiny random-weight Pixtral (its text is noise)",
        flush=True,
    )
    pipeline = Pipeline(config)
    pipeline.start()
    server = ServerThread(queue, pipeline)
    try:
        server.start()
        client = Client(queue.redis_url, namespace=queue.namespace)
        batch = client.new_batch("sample")
        started = time.perf_counter()
        refused = [submit_one(batch, queue.queue, job) for job in jobs]
        results: list[JobResult] = []
        for result in batch.results(block_s=0.2):
            results.append(print_result(result))
            if len(results) % 8 == 0:
                print_progress(batch.counts())
        run_s = time.perf_counter() - started
        counts = batch.counts()
        actors = ray.get([actor.stats.remote() for actor in pipeline.pool.actors])
        client.close()
    finally:
        server.stop()
        pipeline.close()
    return DemoRun(
        results, [r for r in refused if r is not None], counts, pipeline.progress, actors, run_s
    )


def submit_one(batch: Batch, queue: str, job: JobRequest) -> Refusal | None:
    """Submit one job; one the client refuses (it checks every job first) is printed."""
    try:
        batch.submit(JobSpec(job.job_id, queue, job.prompt, job.images, job.sampling))
        return None
    except (JobError, QueueError) as error:
        refusal = Refusal(job.job_id, type(error).__name__, str(error))
        print(f"  {job.job_id:9s} refused  {refusal.error_type}: {refusal.message}")
        return refusal


def print_result(result: JobResult) -> JobResult:
    if result.state is JobState.SUCCEEDED:
        print(
            f"  {result.job_id:9s} {result.finish_reason or '':8s} "
            f"{result.prompt_tokens:4d} prompt + {result.completion_tokens:2d} new tokens"
        )
    else:
        error = result.error
        why = f"{error.type}: {error.message}" if error is not None else ""
        print(f"  {result.job_id:9s} {result.state.value:8s} {why}")
    return result


def print_progress(counts: BatchCounts) -> None:
    print(
        f"  progress: {counts.total - counts.open}/{counts.total} done "
        f"({counts.succeeded} succeeded, {counts.failed} failed; {counts.running} running, "
        f"{counts.queued} queued)",
        flush=True,
    )


def print_summary(demo: DemoRun) -> None:
    results, progress, run_s = demo.results, demo.progress, demo.run_s
    finished = Counter(r.finish_reason or "" for r in results if r.state is JobState.SUCCEEDED)
    failed = Counter(r.error.type for r in results
                     if r.state is not JobState.SUCCEEDED and r.error is not None)
    refused = Counter(r.error_type for r in demo.refused)
    new_tokens = sum(r.completion_tokens for r in results)
    counts = demo.counts
    print()
    print(
        f"states: {counts.succeeded} succeeded ({_counts(finished)}), "
        f"{counts.failed} failed ({_counts(failed)}), {counts.cancelled} cancelled, "
        f"{counts.dead} dead; {len(demo.refused)} refused at submit ({_counts(refused)})"
    )
    print(
        f"vision calls: {progress.vision_calls} for {len(GOOD_IMAGES)} distinct good images "
        f"({progress.feature_reuses} reuses)"
    )
    print(
        f"throughput: {len(results)} jobs through Redis in {run_s:.2f}s = "
        f"{len(results) / run_s:.1f} jobs/s; {new_tokens} new tokens = "
        f"{new_tokens / run_s:.0f} tokens/s"
    )
    print("actors:")
    for actor in demo.actors:
        print(
            f"  {actor.name:18s} GPU {actor.cuda_visible_devices}  "
            f"{actor.num_completed:2d} calls done, {actor.num_failed} failed"
        )


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items())) or "none"
