"""Raw images of awkward sizes, from pixels to logits, against exllamav2's and transformers' own.

vlmq must see an image exactly as exllamav2 (the GPU engine) does, since one image key and
layout serve both engines: the transformers engine's pixel values equal those of exllamav2's
`preprocess` on the raw image (exllamav2 ships them as float16; so are ours compared). Against
transformers' own image processor on the raw image they are equal where the two rules give the
same size; where they do not (Pixtral rounds each side to 16 pixels in transformers, to 32 in
exllamav2, see docs/PREPROCESSING.md), the size is the only difference: transformers' pixels
are its bicubic resize of the raw image to its own size. End to end, from encoded bytes, the
prefill logits equal transformers' own model fed by its own processor on the same raw image.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from PIL import Image

import tests.support.exllamav2_cpu  # noqa: F401  (lets exllamav2 import without CUDA)
from tests.support.hf_reference import (
    chat,
    hf_logits,
    hf_pixels,
    hf_prompt_ids,
    relative_error,
)
from tests.support.transformers_fixtures import pattern_image
from worker.engines.exllamav2.model import ExLlamaV2Settings, load_exllamav2_vlm
from worker.engines.transformers.language import TransformersStepModel
from worker.engines.transformers.model import TransformersVlm
from worker.engines.transformers.sequence import Sequence
from worker.engines.transformers.vision import TransformersVision
from worker.generation import GenerationRequest
from worker.images.decoding import ImageLimits, decode_image
from worker.images.visual_tokens import PixtralImageParams
from worker.images.vlm_family import VlmFamily
from worker.span import Span
from worker.tiny.model import write_tiny_model
from worker.token_range import RESERVED_ID_BASE, TokenRange

# (width, height) within each family's limits (worker/images/visual_tokens.py): odd, tiny,
# very wide, very tall, and large enough to be scaled down. The tiny Pixtral's longest edge is
# 256 pixels; the tiny Qwen2-VL's pixel budget is 100,352 and each side needs 28 pixels.
SIZES = {
    VlmFamily.PIXTRAL: [(71, 45), (63, 95), (1, 1), (3, 5), (17, 20), (1000, 7), (900, 70),
                        (5, 600), (70, 900), (700, 500), (1000, 700)],
    VlmFamily.QWEN2_VL: [(71, 45), (29, 31), (28, 28), (33, 90), (2000, 28), (28, 1500),
                         (800, 600), (601, 333)],
}  # fmt: skip
# A float16 value near 2.6 (normalised pixels reach it) is 2**-9 from its neighbours; the
# float32 arithmetic before the cast is ordered differently on each side.
FLOAT16_STEP = 2e-3


@pytest.fixture(scope="session")
def exllamav2_config(vlm: TransformersVlm, tmp_path_factory: pytest.TempPathFactory) -> object:
    """exllamav2's config for `vlm`'s tiny model (same seed, same bytes), as its engine reads it."""
    model_dir: Path = tmp_path_factory.getbasetemp() / f"exllamav2-preprocess-{vlm.family}"
    write_tiny_model(model_dir, vlm.family.value)
    settings = ExLlamaV2Settings(cache_tokens=4096, max_batch_size=4)
    return load_exllamav2_vlm(model_dir, settings, load_weights=False).config


def exllamav2_pixels(vlm: TransformersVlm, config: object, image: Image.Image) -> torch.Tensor:
    name = "pixtral" if vlm.family is VlmFamily.PIXTRAL else "qwen2"
    preprocess = importlib.import_module(f"exllamav2.vlm.processor.{name}").preprocess
    pixels: torch.Tensor = preprocess(config, image)[0]
    return pixels


def engine_pixels(vlm: TransformersVlm, image: Image.Image) -> torch.Tensor:
    """What the transformers engine feeds its tower for a raw image: Pixtral [3, H, W], Qwen2-VL
    [patches, channels * frames * patch * patch]."""
    pixels = hf_pixels(vlm, [TransformersVision(vlm).prepare(image)])["pixel_values"]
    return pixels[0] if vlm.family is VlmFamily.PIXTRAL else pixels


def hf_size(vlm: TransformersVlm, image: Image.Image) -> tuple[int, int]:
    """(width, height) transformers' own image processor resizes the raw image to."""
    pixels = hf_pixels(vlm, [image])
    if vlm.family is VlmFamily.PIXTRAL:
        height, width = (int(v) for v in pixels["image_sizes"][0])
        return width, height
    _, rows, cols = (int(v) for v in pixels["image_grid_thw"][0])
    patch = vlm.model.config.vision_config.patch_size
    return cols * patch, rows * patch


def hf_pixtral_size(width: int, height: int, params: PixtralImageParams) -> tuple[int, int]:
    """transformers' Pixtral rule as docs/PREPROCESSING.md states it: exllamav2's, but each
    side rounded up to `patch_size * spatial_merge_size` pixels instead of two patches."""
    ratio = max(width / params.longest_edge, height / params.longest_edge)
    if ratio > 1:
        width, height = int(width / ratio), int(height / ratio)
    unit = params.patch_size * params.spatial_merge_size
    return tuple(-(-side // unit) * unit for side in (width, height))  # type: ignore[return-value]


def raw_image(size: tuple[int, int]) -> Image.Image:
    return pattern_image(*size, seed=sum(size) % 17 + 2)


def for_each_size(vlm: TransformersVlm, check: Callable[[Image.Image], None]) -> None:
    """Run `check` on every raw size of the family; fail naming each size that failed."""
    failures = []
    for size in SIZES[vlm.family]:
        try:
            check(raw_image(size))
        except AssertionError as error:
            failures.append(f"{size[0]} x {size[1]}: {str(error).splitlines()[0]}")
    assert not failures, "\n".join(failures)


def test_engine_pixels_are_exllamav2s_on_the_raw_image(
    vlm: TransformersVlm, exllamav2_config: object
) -> None:
    def check(image: Image.Image) -> None:
        ours, theirs = engine_pixels(vlm, image), exllamav2_pixels(vlm, exllamav2_config, image)
        assert theirs.dtype == torch.float16
        assert ours.shape == theirs.shape, f"{tuple(ours.shape)} != {tuple(theirs.shape)}"
        torch.testing.assert_close(ours.half(), theirs, atol=FLOAT16_STEP, rtol=0)

    for_each_size(vlm, check)


def test_engine_pixels_are_transformers_own_where_the_rules_agree(vlm: TransformersVlm) -> None:
    for_each_size(vlm, lambda image: check_against_transformers(vlm, image))


def check_against_transformers(vlm: TransformersVlm, image: Image.Image) -> None:
    vision = TransformersVision(vlm)
    ours_size = vision.prepare(image).size
    theirs_size = hf_size(vlm, image)
    if vlm.family is VlmFamily.QWEN2_VL:
        assert ours_size == theirs_size  # the rules agree on every size vlmq takes
    else:
        assert isinstance(vlm.image_params, PixtralImageParams)
        assert theirs_size == hf_pixtral_size(*image.size, vlm.image_params)
    theirs = hf_pixels(vlm, [image])["pixel_values"]
    if ours_size == theirs_size:
        ours = engine_pixels(vlm, image)
        torch.testing.assert_close(ours, theirs[0] if ours.dim() == 3 else theirs,
                                   atol=1e-6, rtol=0)
    else:
        # The documented difference and nothing else: each side is a multiple of 32 for vlmq,
        # of 16 for transformers, and transformers' pixels are its bicubic resize to that size.
        assert all(side % 32 == 0 for side in ours_size)
        assert all(a - 16 == b for a, b in zip(ours_size, theirs_size, strict=True) if a != b)
        resized = image.resize(theirs_size, Image.Resampling.BICUBIC)
        torch.testing.assert_close(hf_pixels(vlm, [resized])["pixel_values"], theirs,
                                   atol=1e-6, rtol=0)


def from_bytes(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return decode_image(buffer.getvalue(), ImageLimits())


def engine_prefill_logits(vlm: TransformersVlm, prompt: str, image: Image.Image) -> torch.Tensor:
    """Prefill logits of `prompt` with its one `<image>`, the image through the engine's embed."""
    features = TransformersVision(vlm).embed(image)
    span = Span("<image>", TokenRange(1, RESERVED_ID_BASE + 77, features.layout.num_rows),
                features.layout)
    request = GenerationRequest("raw", prompt, (span,), (features.rows,))
    step = TransformersStepModel(vlm)
    logits, _ = step.prompt_logits(Sequence(request, Future(), step.decode_text))
    return logits[:, : vlm.vocab_size]


# The engine ships image rows as float16 (tests/worker/engines/transformers/test_reference.py
# bounds that loss); a resampling other than bicubic moves the logits far more than this.
END_TO_END_TOLERANCE = 1e-3


def test_logits_from_raw_bytes_equal_transformers_own(vlm: TransformersVlm) -> None:
    prompt = chat(vlm, "Describe <image> in detail.")
    compared = []

    def check(raw: Image.Image) -> None:
        image = from_bytes(raw)
        if TransformersVision(vlm).prepare(image).size != hf_size(vlm, image):
            return  # the rules differ here; bench/preprocessing_rules.py measures the cost
        compared.append(image.size)
        ours = engine_prefill_logits(vlm, prompt, image)
        theirs = hf_logits(vlm, hf_prompt_ids(vlm, prompt, [image]), [image])
        assert ours.shape == theirs.shape, f"{tuple(ours.shape)} != {tuple(theirs.shape)}"
        error = relative_error(ours, theirs)
        assert error <= END_TO_END_TOLERANCE, f"logits differ by {error:.2e} of the largest"

    for_each_size(vlm, check)
    assert len(compared) >= 4, f"only {compared} compared"
