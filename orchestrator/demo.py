"""`vlmq demo`: what runs end to end today.

It starts a private redis-server and a local Ray with logical GPUs, writes a tiny tokenizer,
keys a small batch of images that share content, allocates their token ranges through the
cluster-wide allocator actor, and encodes every prompt into one flat ID list. Generation comes
with the engine and pipeline issues; the demo says so rather than pretending.
"""

from __future__ import annotations

import io
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
from PIL import Image

from orchestrator.allocator_config import AllocatorConfig
from orchestrator.allocator_handle import get_or_start_allocator
from orchestrator.image_key import (
    ImageKey,
    PreprocessingValue,
    content_digest,
    image_key_from_encoded,
)
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.range_client import LeasedRangeClient
from worker.prompt_encoder import PromptEncoder
from worker.span import Span
from worker.text_tokenizer import HFTextTokenizer
from worker.tiny_tokenizer import write_tiny_tokenizer

MODEL_FINGERPRINT = "tiny-pixtral-demo"
PATCH_SIZE = 16
PREPROCESSING: dict[str, PreprocessingValue] = {
    "patch_size": PATCH_SIZE,
    "max_longest_side": 1024,
    "resample": "bicubic",
}


@dataclass(frozen=True, slots=True)
class SampleImage:
    name: str
    encoded: bytes
    num_rows: int  # one embedding row per patch


@dataclass(frozen=True, slots=True)
class EncodedPrompt:
    prompt: str
    spans: list[Span]
    ids: list[int]


def make_sample_image(name: str, width: int, height: int, seed: int) -> SampleImage:
    image = Image.new("RGB", (width, height))
    image.putdata(
        [((x * seed) % 256, (y * 3 + seed) % 256, (x + y) % 256)
         for y in range(height) for x in range(width)]
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    num_rows = -(-width // PATCH_SIZE) * -(-height // PATCH_SIZE)
    return SampleImage(name, buffer.getvalue(), num_rows)


SAMPLE_IMAGES = [
    make_sample_image("cat.png", 64, 48, 7),
    make_sample_image("chart.png", 96, 32, 11),
    make_sample_image("receipt.png", 32, 80, 13),
]
SAMPLE_PROMPTS = [
    ("[INST]What is in this picture? [IMG][/INST]", ["cat.png"]),
    ("[INST]Compare [IMG] with [IMG].[/INST]", ["cat.png", "chart.png"]),
    ("[INST]Read the total: [IMG][/INST]", ["receipt.png"]),
    ("[INST]Describe the trend.\n[IMG][/INST]", ["chart.png"]),
    ("[INST][IMG][IMG][IMG] Which is a receipt?[/INST]", ["cat.png", "chart.png", "receipt.png"]),
    ("[INST]Is there a cat? [IMG] Answer yes or no.[/INST]", ["cat.png"]),
]


def alias_for(key: ImageKey) -> str:
    return f"<$IMG_{key.digest[:16]}$>"


def encode_batch(
    client: LeasedRangeClient, encoder: PromptEncoder
) -> tuple[list[EncodedPrompt], dict[str, ImageKey]]:
    images = {image.name: image for image in SAMPLE_IMAGES}
    keys = {
        image.name: image_key_from_encoded(
            content_digest(image.encoded), MODEL_FINGERPRINT, PREPROCESSING
        )
        for image in SAMPLE_IMAGES
    }
    items = []
    for template, names in SAMPLE_PROMPTS:
        prompt, spans = template, []
        for name in names:
            key = keys[name]
            token_range = client.allocate(key.digest, images[name].num_rows)
            # Each [IMG] placeholder becomes this image's alias; one span per distinct image.
            prompt = prompt.replace("[IMG]", alias_for(key), 1)
            span = Span(alias_for(key), token_range)
            if span not in spans:
                spans.append(span)
        items.append((prompt, spans))
    ids = encoder.encode_many(items)
    return [EncodedPrompt(p, s, i) for (p, s), i in zip(items, ids, strict=True)], keys


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
            write_tiny_tokenizer(model_dir, "pixtral")
            encoder = PromptEncoder(HFTextTokenizer.from_model_dir(model_dir))
            config = AllocatorConfig(redis_url=redis_url, namespace=f"demo-{uuid.uuid4().hex[:6]}")
            allocator = get_or_start_allocator(config)
            client = LeasedRangeClient(allocator, config)
            encoded, keys = encode_batch(client, encoder)
            client.sync()
            ray.kill(allocator, no_restart=True)
        finally:
            ray.shutdown()
            if server is not None:
                server.stop()
    print_report(encoded, keys, time.perf_counter() - started)
    return 0


def describe_ids(item: EncodedPrompt) -> str:
    """The prompt's IDs with each image's range shown as one word, so a prompt fits a line."""
    range_at = {span.token_range.first: span.token_range for span in item.spans}
    words = []
    index = 0
    while index < len(item.ids):
        token_range = range_at.get(item.ids[index])
        if token_range is None:
            words.append(str(item.ids[index]))
            index += 1
        else:
            words.append(f"[{token_range.first:,}..{token_range.end - 1:,}]")
            index += token_range.length
    return " ".join(words)


def print_report(encoded: list[EncodedPrompt], keys: dict[str, ImageKey], seconds: float) -> None:
    print(f"vlmq demo: {len(encoded)} prompts, {len(keys)} distinct images")
    for name, key in keys.items():
        print(f"  {name:12s} key {key.digest[:16]}…")
    print()
    for number, item in enumerate(encoded, start=1):
        ranges = ", ".join(
            f"[{s.token_range.first:,}, {s.token_range.end:,})" for s in item.spans
        )
        print(f"prompt {number}: {len(item.ids)} IDs; image ranges {ranges}")
    print(f"\nprompt 5 as IDs: {describe_ids(encoded[4])}")
    uses = sum(len(item.spans) for item in encoded)
    distinct = {s.token_range for item in encoded for s in item.spans}
    print()
    print(f"image uses: {uses}, distinct token ranges: {len(distinct)} (same image, same range)")
    print(f"epoch: {next(iter(distinct)).epoch}; took {seconds:.1f}s")
    print("generation: not built yet (engines and pipeline are the next issues)")
