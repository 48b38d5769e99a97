"""The model families vlmq runs: which one a model directory holds, and how its images are read.

Image layouts are `worker/images/visual_tokens.py`'s: one rule for both engines (exllamav2's
resizing, the reference processors' special tokens). exllamav2 0.3.2's own Pixtral
post-processing keeps an `[IMG_BREAK]` after the last row and then adds `[IMG_END]`, one row
more than the reference processor; vlmq lays the rows out itself, as the reference does, for both
engines.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.errors import VlmqError
from worker.images.visual_tokens import ImageParams, PixtralImageParams, Qwen2VLImageParams


class UnsupportedModelError(VlmqError):
    """The model directory holds an architecture vlmq does not run."""


class VlmFamily(enum.StrEnum):
    PIXTRAL = "pixtral"
    QWEN2_VL = "qwen2-vl"


def detect_family(config: Mapping[str, Any]) -> VlmFamily:
    architectures = config.get("architectures") or []
    vision_type = (config.get("vision_config") or {}).get("model_type")
    if "LlavaForConditionalGeneration" in architectures and vision_type == "pixtral":
        return VlmFamily.PIXTRAL
    if "Qwen2VLForConditionalGeneration" in architectures:
        return VlmFamily.QWEN2_VL
    raise UnsupportedModelError(
        f"architecture {architectures} with vision model {vision_type!r} is not supported; "
        "vlmq runs LlavaForConditionalGeneration with a Pixtral tower and "
        "Qwen2VLForConditionalGeneration"
    )


def read_image_params(model_dir: Path, family: VlmFamily) -> ImageParams:
    """The preprocessing that decides image layouts, read as exllamav2 reads it."""
    preprocessor = json.loads((model_dir / "preprocessor_config.json").read_text())
    if family is VlmFamily.PIXTRAL:
        config = json.loads((model_dir / "config.json").read_text())
        return PixtralImageParams.from_model_configs(preprocessor, config)
    return Qwen2VLImageParams.from_preprocessor_config(preprocessor)
