"""transformers' own way to run a VLM, as its users do: the reference the engine is held to.

The prompt's IDs come from the model's own Hugging Face tokenizer, on the text its processor
writes (each image placeholder expanded to one token per row); the pixels from its own image
processor; the logits from one forward of its model over the whole sequence. Nothing here uses
vlmq's encoder, layouts or engine.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from worker.engines.transformers.model import TransformersVlm
from worker.images.vlm_family import VlmFamily

IMAGE_PLACEHOLDER = "<image>"


def chat(vlm: TransformersVlm, text: str) -> str:
    """`text` as one user turn in the family's chat format, ready for the assistant's answer."""
    if vlm.family is VlmFamily.QWEN2_VL:
        return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    return f"[INST]{text}[/INST]"


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def hf_tokenizer(vlm: TransformersVlm) -> Any:
    """The model directory's own tokenizer, as `AutoTokenizer` loads it."""
    return _hf_tokenizer(Path(vlm.model.name_or_path))


def hf_pixels(vlm: TransformersVlm, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The image processor's output for `images` as given (it resizes them by its own rule)."""
    processed = vlm.image_processor(images=list(images), return_tensors="pt")
    keys = ["pixel_values", "image_sizes" if vlm.family is VlmFamily.PIXTRAL else "image_grid_thw"]
    return {key: processed[key] for key in keys}


def hf_image_expansion(vlm: TransformersVlm, image: Image.Image) -> str:
    """The text transformers' processor puts in place of one image.

    Written out from `PixtralProcessor.replace_image_token` and `Qwen2VLProcessor` (transformers
    5.24): the processor classes need torchvision, which this machine cannot have beside the
    CPU build of torch; their image processors run here and give the sizes.
    """
    pixels = hf_pixels(vlm, [image])
    if vlm.family is VlmFamily.PIXTRAL:
        patch = vlm.model.config.vision_config.patch_size * vlm.merge_size
        height, width = (int(v) // patch for v in pixels["image_sizes"][0])
        words = (["[IMG]"] * width + ["[IMG_BREAK]"]) * height
        words[-1] = "[IMG_END]"
        return "".join(words)
    count = int(pixels["image_grid_thw"][0].prod()) // vlm.merge_size**2
    return "<|vision_start|>" + "<|image_pad|>" * count + "<|vision_end|>"


def hf_prompt_ids(vlm: TransformersVlm, prompt: str, images: Sequence[Image.Image]) -> list[int]:
    """IDs of `prompt` whose `<image>` placeholders stand for `images`, in order."""
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    if len(pieces) != len(images) + 1:
        raise ValueError(f"{len(pieces) - 1} placeholders for {len(images)} images")
    text = pieces[0]
    for image, piece in zip(images, pieces[1:], strict=True):
        text += hf_image_expansion(vlm, image) + piece
    ids: list[int] = hf_tokenizer(vlm)(text).input_ids
    return ids


def hf_logits(
    vlm: TransformersVlm, input_ids: Sequence[int], images: Sequence[Image.Image]
) -> torch.Tensor:
    """Logits at every position of one forward over `input_ids`: [seq, vocab], float32."""
    ids = torch.tensor([list(input_ids)])
    inputs: dict[str, torch.Tensor] = {"input_ids": ids}
    if images:
        inputs |= hf_pixels(vlm, images)
        if vlm.family is VlmFamily.QWEN2_VL:
            inputs["mm_token_type_ids"] = (ids == vlm.image_token_id).int()
    with torch.inference_mode():
        logits: torch.Tensor = vlm.model(**inputs).logits[0]
    return logits[:, : vlm.vocab_size].float()


def tower_rows_float32(vlm: TransformersVlm, image: Image.Image) -> torch.Tensor:
    """The vision tower's image rows for `image` as given, before any cast: [rows, hidden]."""
    pixels = hf_pixels(vlm, [image])
    with torch.inference_mode():
        if vlm.family is VlmFamily.PIXTRAL:
            out = vlm.model.get_image_features(
                **pixels,
                vision_feature_layer=vlm.model.config.vision_feature_layer,
                vision_feature_select_strategy=vlm.model.config.vision_feature_select_strategy,
            )
        else:
            out = vlm.model.get_image_features(**pixels)
    rows: torch.Tensor = out.pooler_output[0]
    return rows


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest difference, relative to the reference's largest magnitude."""
    return float((ours - reference).abs().max() / reference.abs().max())
