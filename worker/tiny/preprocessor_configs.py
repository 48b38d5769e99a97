"""The image-processing files of the tiny VLMs: preprocessor_config.json, processor_config.json.

Sizes are small so the CPU vision towers stay fast; the layout is the real repos', with the keys
exllamav2 0.3.2 reads (`resample` as an int, `min_pixels`/`max_pixels`) beside those
transformers' PIL image processors read.
"""

from __future__ import annotations

from typing import Any

from worker.tiny.tokenizer import TinyTokenizerFamily

# The CLIP statistics both real repos normalise images with.
_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
_RESCALE_FACTOR = 0.00392156862745098  # 1 / 255
_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, which exllamav2 reads as an int

PIXTRAL_PATCH_SIZE = 16
# 16 x 16 patches at most: at most 256 image rows plus 16 [IMG_BREAK]/[IMG_END] rows.
PIXTRAL_LONGEST_EDGE = 256
QWEN2_VL_PATCH_SIZE = 14
QWEN2_VL_MERGE_SIZE = 2
QWEN2_VL_TEMPORAL_PATCH_SIZE = 2
_QWEN2_VL_FACTOR = QWEN2_VL_PATCH_SIZE * QWEN2_VL_MERGE_SIZE  # 28 pixels per merged token
QWEN2_VL_MIN_PIXELS = 4 * _QWEN2_VL_FACTOR**2  # 3136, as the real repo
# At most 128 merged tokens (512 patches), so the CPU vision tower stays fast.
QWEN2_VL_MAX_PIXELS = 128 * _QWEN2_VL_FACTOR**2


def preprocessor_config(family: TinyTokenizerFamily) -> dict[str, Any]:
    """preprocessor_config.json: the image processor's settings."""
    if family == "pixtral":
        return {
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": _IMAGE_MEAN,
            "image_processor_type": "PixtralImageProcessor",
            "image_std": _IMAGE_STD,
            "patch_size": {"height": PIXTRAL_PATCH_SIZE, "width": PIXTRAL_PATCH_SIZE},
            "processor_class": "PixtralProcessor",
            "resample": _BICUBIC,
            "rescale_factor": _RESCALE_FACTOR,
            "size": {"longest_edge": PIXTRAL_LONGEST_EDGE},
        }
    # min_pixels/max_pixels for exllamav2, the same numbers under `size` for transformers.
    return {
        "image_mean": _IMAGE_MEAN,
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": _IMAGE_STD,
        "max_pixels": QWEN2_VL_MAX_PIXELS,
        "merge_size": QWEN2_VL_MERGE_SIZE,
        "min_pixels": QWEN2_VL_MIN_PIXELS,
        "patch_size": QWEN2_VL_PATCH_SIZE,
        "processor_class": "Qwen2VLProcessor",
        "resample": _BICUBIC,
        "rescale_factor": _RESCALE_FACTOR,
        "size": {"longest_edge": QWEN2_VL_MAX_PIXELS, "shortest_edge": QWEN2_VL_MIN_PIXELS},
        "temporal_patch_size": QWEN2_VL_TEMPORAL_PATCH_SIZE,
    }


def processor_config(family: TinyTokenizerFamily) -> dict[str, Any] | None:
    """processor_config.json, which only Pixtral ships (its image and break tokens)."""
    if family != "pixtral":
        return None
    return {
        "image_break_token": "[IMG_BREAK]",
        "image_end_token": "[IMG_END]",
        "image_token": "[IMG]",
        "patch_size": PIXTRAL_PATCH_SIZE,
        "processor_class": "PixtralProcessor",
        "spatial_merge_size": 1,
    }
