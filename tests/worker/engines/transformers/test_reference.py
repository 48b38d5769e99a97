"""The core mechanism against a peer implementation.

For the same images and prompt, the logits of vlmq's path (prompt encoded with reserved ID
ranges, image rows computed by the vision engine, injected at those ranges) equal the logits of
transformers' own model called with its processor's `input_ids` and `pixel_values`.
"""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import torch
from PIL import Image

from tests.support.hf_reference import chat, hf_prompt_ids, tower_rows_float32
from tests.support.transformers_fixtures import pattern_image
from worker.engines.transformers.embedding_injection import placeholder_ids
from worker.engines.transformers.language import TransformersStepModel
from worker.engines.transformers.model import TransformersVlm
from worker.engines.transformers.sequence import Sequence
from worker.engines.transformers.vision import TransformersVision
from worker.generation import GenerationRequest
from worker.images.vlm_family import VlmFamily
from worker.span import Span
from worker.token_range import RESERVED_ID_BASE, TokenRange

IMAGE_A = pattern_image(70, 45, seed=5)
IMAGE_B = pattern_image(33, 90, seed=11)


def image_rows_float32(vlm: TransformersVlm, image: Image.Image) -> torch.Tensor:
    """The tower's rows before the engine's cast to float16, for a tight comparison."""
    return tower_rows_float32(vlm, TransformersVision(vlm).prepare(image))


def our_logits(
    vlm: TransformersVlm, prompt: str, images: dict[str, Image.Image], full_precision: bool
) -> tuple[torch.Tensor, list[int], list[Span]]:
    vision = TransformersVision(vlm)
    spans, rows = [], []
    first = RESERVED_ID_BASE + 12_345
    for alias, image in images.items():
        features = vision.embed(image)
        spans.append(Span(alias, TokenRange(7, first, features.layout.num_rows), features.layout))
        rows.append(image_rows_float32(vlm, image) if full_precision else features.rows)
        first += features.layout.num_rows
    request = GenerationRequest("ref", prompt, tuple(spans), tuple(rows))
    step = TransformersStepModel(vlm)
    sequence = Sequence(request, Future(), step.decode_text)
    logits, _ = step.prompt_logits(sequence)
    return logits, step.encode(sequence), spans


def reference_logits(
    vlm: TransformersVlm, ids: list[int], spans: list[Span], images_in_order: list[Image.Image]
) -> torch.Tensor:
    input_ids = torch.tensor([placeholder_ids(ids, spans, vlm.image_token_id)])
    # Images at the size both engines use (see worker/images/visual_tokens.py); transformers'
    # processor keeps that size.
    prepared = [TransformersVision(vlm).prepare(image) for image in images_in_order]
    processed = vlm.image_processor(images=prepared, return_tensors="pt")
    inputs = {"input_ids": input_ids, "pixel_values": processed["pixel_values"]}
    if vlm.family is VlmFamily.PIXTRAL:
        inputs["image_sizes"] = processed["image_sizes"]
    else:
        inputs["image_grid_thw"] = processed["image_grid_thw"]
        inputs["mm_token_type_ids"] = (input_ids == vlm.image_token_id).int()
    with torch.inference_mode():
        logits: torch.Tensor = vlm.model(**inputs).logits[0]
    return logits[:, : vlm.vocab_size]


CASES = {
    "one image": ("Describe <image> in detail.", {"<image>": IMAGE_A}, [IMAGE_A]),
    "two images": (
        "Compare <img-a> with <img-b>, please.",
        {"<img-a>": IMAGE_A, "<img-b>": IMAGE_B},
        [IMAGE_A, IMAGE_B],
    ),
    "adjacent, image first": ("<img-b><img-a> which?", {"<img-a>": IMAGE_A, "<img-b>": IMAGE_B},
                              [IMAGE_B, IMAGE_A]),
    "same image twice": ("Is <image> the same as <image>?", {"<image>": IMAGE_A},
                         [IMAGE_A, IMAGE_A]),
}


@pytest.mark.parametrize("case", CASES)
def test_injected_logits_equal_transformers_own(vlm: TransformersVlm, case: str) -> None:
    text, images, images_in_order = CASES[case]
    prompt = chat(vlm, text)
    ours, ids, spans = our_logits(vlm, prompt, images, full_precision=True)
    reference = reference_logits(vlm, ids, spans, images_in_order)
    assert ours.shape[0] == reference.shape[0] == len(ids)
    torch.testing.assert_close(ours[:, : vlm.vocab_size], reference, atol=2e-5, rtol=1e-4)


def test_float16_features_stay_close(vlm: TransformersVlm) -> None:
    # The engine ships rows as float16 through the object store; the loss is small.
    prompt = chat(vlm, "Describe <image> in detail.")
    ours, ids, spans = our_logits(vlm, prompt, {"<image>": IMAGE_A}, full_precision=False)
    reference = reference_logits(vlm, ids, spans, [IMAGE_A])
    torch.testing.assert_close(ours[:, : vlm.vocab_size], reference, atol=2e-3, rtol=1e-2)


def test_wrong_image_rows_change_the_logits(vlm: TransformersVlm) -> None:
    # The comparison can fail: inject image B's rows where image A's are expected.
    prompt = chat(vlm, "Describe <image> in detail.")
    ours, ids, spans = our_logits(vlm, prompt, {"<image>": IMAGE_A}, full_precision=True)
    swapped = pattern_image(70, 45, seed=99)
    reference = reference_logits(vlm, ids, spans, [swapped])
    assert not torch.allclose(ours[:, : vlm.vocab_size], reference, atol=1e-3)


@pytest.mark.parametrize("size", [(70, 45), (33, 90), (29, 29), (300, 40)])
def test_placeholder_ids_are_what_the_hf_processor_writes(
    vlm: TransformersVlm, size: tuple[int, int]
) -> None:
    # The expected IDs are the model's own tokenizer's on the processor's expansion: no vlmq
    # encoder on this side, so a BOS the reference would not add (Qwen2-VL) is caught here.
    image = pattern_image(*size, seed=3)
    text = chat(vlm, "Look: <image> and <image>!")
    _, ids, spans = our_logits(vlm, text, {"<image>": image}, full_precision=False)
    prepared = TransformersVision(vlm).prepare(image)
    expected = hf_prompt_ids(vlm, text, [prepared, prepared])
    assert placeholder_ids(ids, spans, vlm.image_token_id) == expected
