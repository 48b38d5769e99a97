"""`vlmq demo`: the sample batch end to end, as far as vlmq is built today.

It starts a private redis-server and a local Ray with logical GPUs, writes a tiny Pixtral model,
decodes and keys the sample images (three of them shared by the prompts, one corrupt),
allocates token ranges through the cluster-wide allocator actor, runs each distinct image
through the vision engine once, and generates every request with the transformers engine's
dynamic batching. It prints one line per request, a summary by outcome, and the throughput.
GPU actors, the pipeline and the Redis job queue are later issues; the engine runs in-process.
"""

from __future__ import annotations

import io
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import ray
from PIL import Image

from orchestrator.allocator_config import AllocatorConfig
from orchestrator.allocator_handle import get_or_start_allocator
from orchestrator.image_key import ImageKey, content_digest, image_key_from_encoded
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.range_client import LeasedRangeClient
from worker.engine import ImageFeatures
from worker.errors import JobError
from worker.generation import GenerationRequest, GenerationResult
from worker.images import ImageLimits, decode_image
from worker.model_fingerprint import model_fingerprint
from worker.sampling import SamplingParams
from worker.span import Span
from worker.tiny_model import write_tiny_model
from worker.transformers_language import start_transformers_engine
from worker.transformers_model import load_transformers_vlm
from worker.transformers_vision import TransformersVision


def make_sample_image(width: int, height: int, seed: int, image_format: str = "PNG") -> bytes:
    image = Image.new("RGB", (width, height))
    image.putdata(
        [((x * seed) % 256, (y * 3 + seed) % 256, (x + y) % 256)
         for y in range(height) for x in range(width)]
    )
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


SAMPLE_IMAGES = {
    "cat.png": make_sample_image(64, 48, 7),
    "chart.png": make_sample_image(96, 32, 11),
    "receipt.jpg": make_sample_image(32, 80, 13, "JPEG"),
    "broken.png": make_sample_image(40, 40, 17)[:60],  # cut off mid-file
}
QUESTIONS = [
    ("What is in this picture? [IMG]", ["cat.png"]),
    ("Compare [IMG] with [IMG].", ["cat.png", "chart.png"]),
    ("Read the total: [IMG]", ["receipt.jpg"]),
    ("Describe the trend.\n[IMG]", ["chart.png"]),
    ("[IMG][IMG][IMG] Which is a receipt?", ["cat.png", "chart.png", "receipt.jpg"]),
    ("Is there a cat? [IMG] Answer yes or no.", ["cat.png"]),
    ("What colour dominates [IMG]?", ["broken.png"]),
]
# Enough requests for dynamic batching to matter, every image shared by several of them.
SAMPLE_BATCH = [(f"q{i:02d}", *QUESTIONS[i % len(QUESTIONS)]) for i in range(21)]


@dataclass(frozen=True, slots=True)
class Outcome:
    request_id: str
    result: GenerationResult | None
    error: str | None  # a job error's message; the job failed alone


class DemoBatch:
    """Turns the sample batch into generation requests, each distinct image embedded once."""

    def __init__(self, model_dir: Path, client: LeasedRangeClient) -> None:
        self.vlm = load_transformers_vlm(model_dir)
        self.vision = TransformersVision(self.vlm)
        self.fingerprint = model_fingerprint(model_dir)
        self.client = client
        self.limits = ImageLimits()
        self.features: dict[ImageKey, ImageFeatures] = {}
        self.num_embedded = 0

    def request(self, request_id: str, question: str, names: list[str]) -> GenerationRequest:
        spans, rows, prompt = [], [], f"[INST]{question}[/INST]"
        for name in names:
            key, features = self._image(name)
            token_range = self.client.allocate(key.digest, features.layout.num_rows)
            alias = f"<$IMG_{key.digest[:16]}$>"
            prompt = prompt.replace("[IMG]", alias, 1)
            span = Span(alias, token_range, features.layout)
            if span not in spans:
                spans.append(span)
                rows.append(features.rows)
        return GenerationRequest(
            request_id, prompt, tuple(spans), tuple(rows), SamplingParams(max_new_tokens=24, seed=1)
        )

    def _image(self, name: str) -> tuple[ImageKey, ImageFeatures]:
        encoded = SAMPLE_IMAGES[name]
        preprocessing = {"longest_edge": self.vlm.image_processor.size["longest_edge"]}
        key = image_key_from_encoded(content_digest(encoded), self.fingerprint, preprocessing)
        if key not in self.features:
            self.features[key] = self.vision.embed(decode_image(encoded, self.limits))
            self.num_embedded += 1
        return key, self.features[key]


def run_demo(redis_url: str | None = None) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlmq-demo-") as scratch:
        server = None
        if redis_url is None:
            server = PrivateRedisServer(Path(scratch))
            server.start()
            redis_url = server.url
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
        try:
            model_dir = Path(scratch) / "tiny-pixtral"
            write_tiny_model(model_dir, "pixtral")
            config = AllocatorConfig(redis_url=redis_url, namespace=f"demo-{uuid.uuid4().hex[:6]}")
            allocator = get_or_start_allocator(config)
            batch = DemoBatch(model_dir, LeasedRangeClient(allocator, config))
            outcomes, generate_s = generate(batch)
            ray.kill(allocator, no_restart=True)
        finally:
            ray.shutdown()
            if server is not None:
                server.stop()
    print_report(outcomes, batch.num_embedded, generate_s, time.perf_counter() - started)
    return 0


def generate(batch: DemoBatch) -> tuple[list[Outcome], float]:
    engine = start_transformers_engine(batch.vlm, max_batch_size=8)
    started = time.perf_counter()
    submitted: list[tuple[str, Future[GenerationResult] | JobError]] = []
    for request_id, question, names in SAMPLE_BATCH:
        try:
            request = batch.request(request_id, question, names)
            submitted.append((request_id, engine.submit(request)))
        except JobError as error:  # bad input fails its job before it reaches the engine
            submitted.append((request_id, error))
    outcomes = []
    for request_id, pending in submitted:
        if isinstance(pending, JobError):
            outcomes.append(Outcome(request_id, None, f"{type(pending).__name__}: {pending}"))
            continue
        try:
            outcomes.append(Outcome(request_id, pending.result(), None))
        except JobError as error:
            outcomes.append(Outcome(request_id, None, f"{type(error).__name__}: {error}"))
    seconds = time.perf_counter() - started
    engine.close()
    return outcomes, seconds


def print_report(
    outcomes: list[Outcome], num_embedded: int, generate_s: float, total_s: float
) -> None:
    print(f"vlmq demo: {len(outcomes)} requests, tiny random-weight Pixtral (text is noise)")
    for outcome in outcomes:
        if outcome.result is None:
            print(f"  {outcome.request_id}  failed     {outcome.error}")
            continue
        result = outcome.result
        print(
            f"  {outcome.request_id}  {result.finish_reason.value:10s} "
            f"{result.num_prompt_tokens:4d} prompt + {result.num_completion_tokens:3d} new tokens"
        )
    counts = Counter(
        "failed" if o.result is None else o.result.finish_reason.value for o in outcomes
    )
    new_tokens = sum(o.result.num_completion_tokens for o in outcomes if o.result is not None)
    print()
    print("outcomes: " + ", ".join(f"{name} {count}" for name, count in sorted(counts.items())))
    print(f"vision tower runs: {num_embedded} for {len(SAMPLE_IMAGES) - 1} distinct good images")
    print(
        f"throughput: {new_tokens} new tokens in {generate_s:.1f}s = "
        f"{new_tokens / generate_s:.0f} tokens/s, "
        f"{len(outcomes) / generate_s:.1f} requests/s; whole demo {total_s:.1f}s"
    )
