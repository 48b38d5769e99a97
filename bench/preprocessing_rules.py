"""What following exllamav2's Pixtral resize rule costs against transformers' own.

exllamav2 rounds each side of a Pixtral image up to two patches (32 pixels); transformers'
processor rounds to `patch_size * spatial_merge_size` (16 pixels for Pixtral-12B). vlmq follows
exllamav2 (docs/PREPROCESSING.md). For raw images of sizes where the rules differ, this prints
each rule's size and image rows, and how far vlmq's next-token logits (the transformers engine
from the raw image) are from transformers' own model fed by its own processor on the same raw
image, on the tiny random-weight Pixtral; then the row counts of both rules for Pixtral-12B's
1024-pixel edge at common photo sizes (arithmetic only, no model).

Usage: .venv/bin/python -m bench.preprocessing_rules
"""

from __future__ import annotations

import copy
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.machine import describe_machine
from worker.engines.transformers.language import TransformersStepModel
from worker.engines.transformers.model import TransformersVlm, load_transformers_vlm
from worker.engines.transformers.sequence import Sequence
from worker.engines.transformers.vision import TransformersVision
from worker.generation import GenerationRequest
from worker.images.visual_tokens import PixtralImageParams, pixtral_layout
from worker.span import Span
from worker.tiny.model import write_tiny_model
from worker.token_range import RESERVED_ID_BASE, TokenRange

PROMPT = "[INST]Describe <image> in detail.[/INST]"
# (width, height) of raw images for the tiny model (longest edge 256); the last two agree.
TINY_SIZES = [(71, 45), (48, 48), (33, 90), (1, 1), (5, 600), (1000, 7), (200, 150), (100, 100),
              (63, 95), (700, 500)]  # fmt: skip
PHOTO_SIZES = [(1024, 768), (1920, 1080), (1000, 750), (640, 480), (500, 375), (1080, 1350),
               (3000, 2000), (1234, 567), (300, 300), (100, 60)]  # fmt: skip


@dataclass(frozen=True)
class Rules:
    """One raw size under both rules: (width, height) and image-token rows of each."""

    vlmq_size: tuple[int, int]
    vlmq_rows: int
    hf_size: tuple[int, int]
    hf_rows: int


def pixtral_rows(width: int, height: int, patch: int) -> int:
    # [IMG] per patch and one [IMG_BREAK]/[IMG_END] per row of patches.
    return (height // patch) * (width // patch + 1)


def both_rules(processor: Any, params: PixtralImageParams, size: tuple[int, int]) -> Rules:
    layout = pixtral_layout(*size, params)
    processed = processor(images=[Image.new("RGB", size)], return_tensors="pt")
    height, width = (int(v) for v in processed["image_sizes"][0])
    unit = params.patch_size * params.spatial_merge_size
    return Rules(
        vlmq_size=(layout.resized_width, layout.resized_height),
        vlmq_rows=layout.num_rows,
        hf_size=(width, height),
        hf_rows=pixtral_rows(width, height, unit),
    )


def next_token_logits_vlmq(vlm: TransformersVlm, image: Image.Image) -> torch.Tensor:
    features = TransformersVision(vlm).embed(image)
    span = Span("<image>", TokenRange(1, RESERVED_ID_BASE, features.layout.num_rows),
                features.layout)
    request = GenerationRequest("bench", PROMPT, (span,), (features.rows,))
    step = TransformersStepModel(vlm)
    logits, _ = step.prompt_logits(Sequence(request, Future(), step.decode_text))
    return logits[-1, : vlm.vocab_size]


def next_token_logits_hf(vlm: TransformersVlm, tokenizer: Any, image: Image.Image) -> torch.Tensor:
    processed = vlm.image_processor(images=[image], return_tensors="pt")
    height, width = (int(v) // vlm.image_params.patch_size for v in processed["image_sizes"][0])
    expansion = ("[IMG]" * width + "[IMG_BREAK]") * height
    expansion = expansion[: -len("[IMG_BREAK]")] + "[IMG_END]"
    ids = tokenizer(PROMPT.replace("<image>", expansion), return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = vlm.model(
            input_ids=ids,
            pixel_values=processed["pixel_values"],
            image_sizes=processed["image_sizes"],
        ).logits
    next_token: torch.Tensor = logits[0, -1, : vlm.vocab_size].float()
    return next_token


def pattern(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7) % 256, (y * 13) % 256, ((x + y) * 5) % 256)
                   for y in range(height) for x in range(width)])
    return image


def main() -> None:
    from transformers import AutoTokenizer

    print(describe_machine())
    with tempfile.TemporaryDirectory() as directory:
        model_dir = Path(directory) / "pixtral"
        write_tiny_model(model_dir, "pixtral")
        vlm = load_transformers_vlm(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        params = vlm.image_params
        assert isinstance(params, PixtralImageParams) and vlm.merge_size == 1
        print(f"\ntiny Pixtral (longest edge {params.longest_edge}, patch {params.patch_size}, "
              f"merge 1): vlmq (exllamav2's rule) against transformers' own, from the raw image")
        print("| raw size | vlmq size | vlmq rows | HF size | HF rows | max abs logit diff "
              "/ max abs logit | same argmax |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for size in TINY_SIZES:
            rules = both_rules(vlm.image_processor, params, size)
            image = pattern(*size)
            ours = next_token_logits_vlmq(vlm, image)
            theirs = next_token_logits_hf(vlm, tokenizer, image)
            error = float((ours - theirs).abs().max() / theirs.abs().max())
            same = bool(ours.argmax() == theirs.argmax())
            print(f"| {size[0]} x {size[1]} | {rules.vlmq_size[0]} x {rules.vlmq_size[1]} | "
                  f"{rules.vlmq_rows} | {rules.hf_size[0]} x {rules.hf_size[1]} | "
                  f"{rules.hf_rows} | {error:.2e} | {'yes' if same else 'no'} |")

        real = PixtralImageParams(patch_size=16, longest_edge=1024, spatial_merge_size=1)
        processor = copy.deepcopy(vlm.image_processor)
        processor.size = {"longest_edge": real.longest_edge}
        print("\nPixtral-12B (longest edge 1024, patch 16, merge 1): rows by each rule")
        print("| raw size | vlmq size | vlmq rows | HF size | HF rows | extra rows |")
        print("| --- | --- | --- | --- | --- | --- |")
        for size in PHOTO_SIZES:
            rules = both_rules(processor, real, size)
            extra = rules.vlmq_rows - rules.hf_rows
            print(f"| {size[0]} x {size[1]} | {rules.vlmq_size[0]} x {rules.vlmq_size[1]} | "
                  f"{rules.vlmq_rows} | {rules.hf_size[0]} x {rules.hf_size[1]} | "
                  f"{rules.hf_rows} | {extra} ({100 * extra / rules.hf_rows:.1f}%) |")


if __name__ == "__main__":
    main()
