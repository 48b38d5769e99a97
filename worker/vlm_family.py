"""The model families vlmq runs, and what differs between them: how an image's rows are laid out.

Layouts follow the families' reference processors (the same as transformers'):
- Pixtral: the image's patches row by row, each row followed by `[IMG_BREAK]`, except the last,
  which is followed by `[IMG_END]` instead. (exllamav2 0.3.2's own Pixtral post-processing keeps
  the last `[IMG_BREAK]` and adds `[IMG_END]` after it, one row more than the reference; vlmq
  lays the rows out itself, for both engines, as the reference does.)
- Qwen2-VL: `<|vision_start|>`, the merged patches, `<|vision_end|>`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import VlmqError
from worker.span import ImageGrid, SpanLayout


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


@dataclass(frozen=True, slots=True)
class ImageTokens:
    """The special token IDs a family writes around and inside an image."""

    image: int  # the placeholder transformers' processor repeats once per image row
    open: int | None  # before the image (Qwen2-VL's <|vision_start|>)
    row_break: int | None  # after each patch row but the last (Pixtral's [IMG_BREAK])
    close: int  # after the image ([IMG_END], <|vision_end|>)


def pixtral_layout(grid_rows: int, grid_cols: int, tokens: ImageTokens) -> SpanLayout:
    """Layout of an image of `grid_rows` x `grid_cols` (merged) patches."""
    assert tokens.row_break is not None
    row_length = grid_cols + 1
    text_rows = tuple(
        (row * row_length + grid_cols, tokens.row_break if row < grid_rows - 1 else tokens.close)
        for row in range(grid_rows)
    )
    return SpanLayout(
        num_rows=grid_rows * row_length,
        text_rows=text_rows,
        grid=ImageGrid(frames=1, height=grid_rows, width=grid_cols),
    )


def qwen2_vl_layout(grid: ImageGrid, merge_size: int, tokens: ImageTokens) -> SpanLayout:
    """Layout of an image whose patch grid (before merging) is `grid`."""
    assert tokens.open is not None
    num_image_rows = grid.frames * grid.height * grid.width // merge_size**2
    return SpanLayout(
        num_rows=num_image_rows + 2,
        text_rows=((0, tokens.open), (num_image_rows + 1, tokens.close)),
        num_pre_tokens=1,
        num_post_tokens=1,
        grid=grid,
    )
