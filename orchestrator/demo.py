"""`vlmq demo`: the bundled sample batch through the Pipeline on a local cluster.

It starts a private redis-server (the allocator's durable state) unless given one, a local Ray
with two logical GPUs, and writes a tiny random-weight Pixtral. A Pipeline of one vision actor
and two generator actors, each on half a GPU, then runs 24 jobs over the sample images: the
images are shared between jobs, so the vision tower runs once per distinct image; one job
carries a corrupt image and one has fewer placeholders than images, and each fails alone with a
typed error. It prints a line per job as it finishes, a summary by outcome, vision calls against
distinct images, and the throughput of `Pipeline.run`.

The sample images (`sample_images/`) were drawn with Pillow for this demo.
"""

from __future__ import annotations

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
from orchestrator.pipeline.job import JobOutcome, JobRequest
from orchestrator.private_redis import PrivateRedisServer
from worker.actors.stats import ActorStats
from worker.engines import EngineConfig
from worker.sampling import SamplingParams
from worker.tiny.model import write_tiny_model

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
class DemoRun:
    outcomes: list[JobOutcome]  # in the order the jobs finished
    progress: Progress
    actors: list[ActorStats]
    run_s: float  # Pipeline.run, from the first job in to the last outcome out


def run_demo(redis_url: str | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="vlmq-demo-") as scratch:
        server = None
        if redis_url is None:
            server = PrivateRedisServer(Path(scratch))
            server.start()
            redis_url = server.url
        # Each actor holds one logical CPU while it lives; the fourth runs the image tasks.
        ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
        try:
            model_dir = Path(scratch) / "tiny-pixtral"
            write_tiny_model(model_dir, "pixtral")
            demo = run_batch(pipeline_config(model_dir, redis_url), sample_batch())
        finally:
            ray.shutdown()
            if server is not None:
                server.stop()
    print_summary(demo)
    return 0


def pipeline_config(model_dir: Path, redis_url: str) -> PipelineConfig:
    return PipelineConfig(
        engine=EngineConfig(str(model_dir)),
        allocator=AllocatorConfig(redis_url, namespace=f"demo-{uuid.uuid4().hex[:6]}"),
        pool=PoolConfig(
            num_vision_actors=1,
            num_generator_actors=2,
            gpus_per_vision_actor=0.5,
            gpus_per_generator_actor=0.5,
            name_prefix="demo",
        ),
    )


def run_batch(config: PipelineConfig, batch: list[JobRequest]) -> DemoRun:
    print(
        f"vlmq demo: {len(batch)} jobs; 1 vision + 2 generator actors on 2 logical GPUs; "
        "tiny random-weight Pixtral (its text is noise)",
        flush=True,
    )
    pipeline = Pipeline(config)
    try:
        pipeline.start()
        started = time.perf_counter()
        outcomes = [print_outcome(outcome) for outcome in pipeline.run(batch)]
        run_s = time.perf_counter() - started
        actors = ray.get([actor.stats.remote() for actor in pipeline.pool.actors])
    finally:
        pipeline.close()
    return DemoRun(outcomes, pipeline.progress, actors, run_s)


def print_outcome(outcome: JobOutcome) -> JobOutcome:
    if outcome.result is not None:
        result = outcome.result
        print(
            f"  {outcome.job_id:9s} {result.finish_reason.value:8s} "
            f"{result.num_prompt_tokens:4d} prompt + {result.num_completion_tokens:2d} new tokens"
        )
    elif outcome.failure is not None:
        failure = outcome.failure
        print(f"  {outcome.job_id:9s} failed   {failure.error_type}: {failure.message}")
    return outcome


def print_summary(demo: DemoRun) -> None:
    outcomes, progress, run_s = demo.outcomes, demo.progress, demo.run_s
    finished = Counter(o.result.finish_reason.value for o in outcomes if o.result is not None)
    failed = Counter(o.failure.error_type for o in outcomes if o.failure is not None)
    new_tokens = sum(o.result.num_completion_tokens for o in outcomes if o.result is not None)
    print()
    print(
        f"outcomes: {sum(finished.values())} succeeded ({_counts(finished)}), "
        f"{sum(failed.values())} failed ({_counts(failed)})"
    )
    print(
        f"vision calls: {progress.vision_calls} for {len(GOOD_IMAGES)} distinct good images "
        f"({progress.feature_reuses} reuses)"
    )
    print(
        f"throughput: {len(outcomes)} requests in {run_s:.2f}s = {len(outcomes) / run_s:.1f} "
        f"requests/s; {new_tokens} new tokens = {new_tokens / run_s:.0f} tokens/s"
    )
    print("actors:")
    for actor in demo.actors:
        print(
            f"  {actor.name:18s} GPU {actor.cuda_visible_devices}  "
            f"{actor.num_completed:2d} calls done, {actor.num_failed} failed"
        )


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items())) or "none"
