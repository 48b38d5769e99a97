"""How many embedding rows an image becomes, per model family, known before any model runs.

The allocator must hand out a token range before the vision tower runs, so the row count is
computed here from the image size and the family's preprocessing parameters alone. The rules
are exllamav2's (the GPU engine): its resizing in `exllamav2/vlm/processor/{pixtral,qwen2}.py`
and the special rows its `postprocess` puts inside the embedding. They equal the Hugging Face
processors' except where noted below, and where either of them refuses a size we refuse it too.

Pixtral: exllamav2 rounds each side up to a multiple of *two* patches whatever the spatial
merge size, and stretches the image to that; Hugging Face rounds to `patch_size *
spatial_merge_size`. With a merge size of 2 (Mistral-Small-3.1) they agree; with 1 (Pixtral-12B)
Hugging Face's grid can be one patch narrower or shorter, so the transformers engine must resize
the image to `resized_width x resized_height` from here before calling its processor (which
then keeps that size). An aspect ratio so extreme that one side scales to zero
pixels is refused (Hugging Face fails on it; exllamav2 would round it up to one patch).

Qwen2-VL: exllamav2 refuses a side shorter than `patch_size * merge_size` (28 pixels), which
Hugging Face would scale up; we refuse it. When `max_pixels` is so small that a side rounds to
zero, Hugging Face keeps one unit and exllamav2 would fail; we refuse it. Both refuse aspect
ratios above 200.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import UnsupportedImageShapeError
from worker.span import ImageGrid, SpanLayout

# exllamav2's vision towers refuse larger inputs (`vision_max_size`).
MAX_ENGINE_SIDE = 16384
# Both exllamav2 and Hugging Face refuse a longer side more than this many times the shorter.
QWEN2_VL_MAX_ASPECT_RATIO = 200

PIXTRAL_BREAK_TOKEN = "[IMG_BREAK]"
PIXTRAL_END_TOKEN = "[IMG_END]"
QWEN2_VL_START_TOKEN = "<|vision_start|>"
QWEN2_VL_END_TOKEN = "<|vision_end|>"

# preprocessor_config.json keys that change pixel values, or only how Hugging Face batches or
# labels things, never the geometry; read by nobody here.
_GEOMETRY_FREE_KEYS = frozenset(
    {
        "image_mean",
        "image_std",
        "rescale_factor",
        "resample",
        "do_rescale",
        "do_normalize",
        "do_convert_rgb",
        "do_pad",
        "default_to_square",
        "crop_size",  # used only with do_center_crop, which must be off
        "data_format",
        "input_data_format",
        "device",
        "return_tensors",
        "disable_grouping",
        "image_processor_type",
        "processor_class",
        "auto_map",
    }
)
# Switches that must keep their default for the row count to hold; checked, not read.
_SWITCH_KEYS = frozenset({"do_resize", "do_center_crop"})


@dataclass(frozen=True, slots=True)
class PixtralImageParams:
    """Preprocessing of the Pixtral vision tower (Pixtral-12B, Mistral-Small-3.1)."""

    patch_size: int = 16  # pixels per side of one vision-tower patch
    longest_edge: int = 1024  # images are scaled down (never up) to fit this square
    # Patches merged per side into one embedding row before the projector: 1 for Pixtral-12B,
    # 2 for Mistral-Small-3.1 (set in its config.json, not in preprocessor_config.json).
    spatial_merge_size: int = 1

    def __post_init__(self) -> None:
        _require_positive(self, ("patch_size", "longest_edge", "spatial_merge_size"))
        if self.spatial_merge_size not in (1, 2):
            # exllamav2 rounds sides to two patches, which only a merge of 1 or 2 divides.
            raise ValueError(f"spatial_merge_size must be 1 or 2, got {self.spatial_merge_size}")
        if self.longest_edge % self.resize_multiple:
            # exllamav2 asserts this; a scaled image would otherwise be rounded past the limit.
            raise ValueError(
                f"longest_edge {self.longest_edge} is not a multiple of {self.resize_multiple}"
            )

    @property
    def resize_multiple(self) -> int:
        """Each resized side is a multiple of this (exllamav2: two patches, whatever the merge)."""
        return 2 * self.patch_size

    @classmethod
    def from_preprocessor_config(
        cls, config: Mapping[str, Any], *, spatial_merge_size: int = 1
    ) -> PixtralImageParams:
        """Read a Hugging Face `preprocessor_config.json`; unknown keys are an error."""
        _check_keys(config, "Pixtral", {"patch_size", "size"})
        patch = config.get("patch_size")
        if isinstance(patch, Mapping):
            if set(patch) != {"height", "width"} or patch["height"] != patch["width"]:
                raise ValueError(f"patch_size must be square, got {dict(patch)}")
            patch = patch["height"]
        size = config.get("size")
        if not isinstance(size, Mapping) or "longest_edge" not in size:
            # exllamav2 reads only longest_edge; a height/width box would go unnoticed there.
            raise ValueError(f"size must name longest_edge, got {size!r}")
        return cls(
            patch_size=_as_int("patch_size", patch),
            longest_edge=_as_int("size.longest_edge", size["longest_edge"]),
            spatial_merge_size=spatial_merge_size,
        )

    @classmethod
    def from_model_configs(
        cls, preprocessor_config: Mapping[str, Any], model_config: Mapping[str, Any]
    ) -> PixtralImageParams:
        """As exllamav2 reads them: the merge size from config.json (top level), else 1."""
        merge = _as_int("spatial_merge_size", model_config.get("spatial_merge_size", 1))
        return cls.from_preprocessor_config(preprocessor_config, spatial_merge_size=merge)


@dataclass(frozen=True, slots=True)
class Qwen2VLImageParams:
    """Preprocessing of the Qwen2-VL vision tower (Hugging Face's defaults)."""

    patch_size: int = 14  # pixels per side of one vision-tower patch
    merge_size: int = 2  # patches merged per side into one embedding row
    # Frames per temporal patch; a still image is repeated to fill one, so it never changes
    # the row count, but it changes the embedding.
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56  # smaller images are scaled up to at least this area
    max_pixels: int = 28 * 28 * 1280  # larger images are scaled down to at most this area

    def __post_init__(self) -> None:
        _require_positive(
            self, ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels")
        )
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")

    @property
    def resize_multiple(self) -> int:
        """Each resized side is a multiple of this: one merged patch."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_preprocessor_config(cls, config: Mapping[str, Any]) -> Qwen2VLImageParams:
        """Read a Hugging Face `preprocessor_config.json`; unknown keys are an error.

        `patch_size`, `merge_size` and `temporal_patch_size` are required, as exllamav2
        requires them. The pixel bounds come from top-level `min_pixels`/`max_pixels` (what
        exllamav2 reads, and what overrides `size` in Hugging Face), else from `size`.
        """
        _check_keys(
            config,
            "Qwen2-VL",
            {"patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels", "size"},
        )
        for key in ("patch_size", "merge_size", "temporal_patch_size"):
            if key not in config:
                raise ValueError(f"preprocessor_config.json for Qwen2-VL lacks {key}")
        size = config.get("size") or {}
        if not isinstance(size, Mapping):
            raise ValueError(f"size must be a mapping, got {size!r}")
        return cls(
            patch_size=_as_int("patch_size", config["patch_size"]),
            merge_size=_as_int("merge_size", config["merge_size"]),
            temporal_patch_size=_as_int("temporal_patch_size", config["temporal_patch_size"]),
            min_pixels=_pixel_bound(config, size, "min_pixels", "shortest_edge"),
            max_pixels=_pixel_bound(config, size, "max_pixels", "longest_edge"),
        )


@dataclass(frozen=True, slots=True)
class VisualLayout:
    """Where one image's rows sit in its token range, from its size alone."""

    resized_width: int  # pixels, as the vision tower sees the image
    resized_height: int
    patch_rows: int  # grid height in vision-tower patches, before spatial merging
    patch_cols: int  # grid width in patches, before spatial merging
    merge_size: int  # patches merged per side into one embedding row
    # Special-token rows inside the range, (row offset, token), ascending; their embeddings
    # come from the language model's table, not from the vision tower.
    text_rows: tuple[tuple[int, str], ...]
    # exllamav2's pre_tokens/post_tokens: text rows it counts as outside the image proper.
    num_pre_tokens: int
    num_post_tokens: int

    @property
    def merged_rows(self) -> int:
        return self.patch_rows // self.merge_size

    @property
    def merged_cols(self) -> int:
        return self.patch_cols // self.merge_size

    @property
    def num_image_rows(self) -> int:
        """Rows the vision tower produces, after merging."""
        return self.merged_rows * self.merged_cols

    @property
    def num_rows(self) -> int:
        """Length of the image's token range: image rows plus special-token rows."""
        return self.num_image_rows + len(self.text_rows)

    def span_layout(self, token_ids: Mapping[str, int]) -> SpanLayout:
        """This layout with the special tokens as IDs of the model's tokenizer."""
        missing = sorted({token for _, token in self.text_rows} - set(token_ids))
        if missing:
            raise ValueError(f"no token ID given for {', '.join(missing)}")
        return SpanLayout(
            num_rows=self.num_rows,
            text_rows=tuple((offset, token_ids[token]) for offset, token in self.text_rows),
            num_pre_tokens=self.num_pre_tokens,
            num_post_tokens=self.num_post_tokens,
            grid=ImageGrid(frames=1, height=self.patch_rows, width=self.patch_cols),
        )


def pixtral_layout(width: int, height: int, params: PixtralImageParams) -> VisualLayout:
    """Rows of an image for Pixtral: `rows * (cols + 1)` in merged patches.

    Each row of patches is followed by `[IMG_BREAK]`, except the last, followed by `[IMG_END]`.
    """
    _check_engine_side(width, height)
    edge = params.longest_edge
    ratio = max(width / edge, height / edge)
    scaled_width, scaled_height = width, height
    if ratio > 1:
        # Floor, as both exllamav2 and Hugging Face do, so the image fits inside the edge.
        scaled_width, scaled_height = math.floor(width / ratio), math.floor(height / ratio)
        if min(scaled_width, scaled_height) == 0:
            raise UnsupportedImageShapeError(
                f"the image is {width} x {height} pixels; scaled down to fit {edge} pixels "
                f"its short side would vanish, an aspect ratio this model cannot take"
            )
    multiple = params.resize_multiple
    resized_width = _round_up(scaled_width, multiple)
    resized_height = _round_up(scaled_height, multiple)
    merge = params.spatial_merge_size
    cols = resized_width // params.patch_size // merge
    rows = resized_height // params.patch_size // merge
    text_rows = tuple(
        (row * (cols + 1) + cols, PIXTRAL_END_TOKEN if row == rows - 1 else PIXTRAL_BREAK_TOKEN)
        for row in range(rows)
    )
    return VisualLayout(
        resized_width=resized_width,
        resized_height=resized_height,
        patch_rows=resized_height // params.patch_size,
        patch_cols=resized_width // params.patch_size,
        merge_size=merge,
        text_rows=text_rows,
        num_pre_tokens=0,
        num_post_tokens=0,
    )


def qwen2_vl_layout(width: int, height: int, params: Qwen2VLImageParams) -> VisualLayout:
    """Rows of an image for Qwen2-VL: `<|vision_start|>`, merged patches, `<|vision_end|>`."""
    _check_engine_side(width, height)
    factor = params.resize_multiple
    if min(width, height) < factor:
        raise UnsupportedImageShapeError(
            f"the image is {width} x {height} pixels; this model needs each side to be at "
            f"least {factor} pixels"
        )
    if max(width, height) / min(width, height) > QWEN2_VL_MAX_ASPECT_RATIO:
        raise UnsupportedImageShapeError(
            f"the image is {width} x {height} pixels; this model takes aspect ratios up to "
            f"{QWEN2_VL_MAX_ASPECT_RATIO}:1"
        )
    resized_width, resized_height = _smart_resize(width, height, params)
    if min(resized_width, resized_height) == 0:
        raise UnsupportedImageShapeError(
            f"the image is {width} x {height} pixels; scaled down to {params.max_pixels:,} "
            f"pixels its short side would vanish, an aspect ratio this model cannot take"
        )
    patch_rows = resized_height // params.patch_size
    patch_cols = resized_width // params.patch_size
    num_image_rows = (patch_rows // params.merge_size) * (patch_cols // params.merge_size)
    return VisualLayout(
        resized_width=resized_width,
        resized_height=resized_height,
        patch_rows=patch_rows,
        patch_cols=patch_cols,
        merge_size=params.merge_size,
        text_rows=((0, QWEN2_VL_START_TOKEN), (num_image_rows + 1, QWEN2_VL_END_TOKEN)),
        num_pre_tokens=1,
        num_post_tokens=1,
    )


def _smart_resize(width: int, height: int, params: Qwen2VLImageParams) -> tuple[int, int]:
    """exllamav2's `smart_resize`: sides to multiples of `factor`, area within the bounds.

    Python's round (half to even) as in both originals; unlike Hugging Face, a side that
    floors to zero under `max_pixels` stays zero (the caller refuses it).
    """
    factor = params.resize_multiple
    new_width = round(width / factor) * factor
    new_height = round(height / factor) * factor
    if new_width * new_height > params.max_pixels:
        beta = math.sqrt(width * height / params.max_pixels)
        new_width = math.floor(width / beta / factor) * factor
        new_height = math.floor(height / beta / factor) * factor
    elif new_width * new_height < params.min_pixels:
        beta = math.sqrt(params.min_pixels / (width * height))
        new_width = math.ceil(width * beta / factor) * factor
        new_height = math.ceil(height * beta / factor) * factor
    return new_width, new_height


def _check_engine_side(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"an image size must be positive, got {width} x {height}")
    if max(width, height) > MAX_ENGINE_SIDE:
        raise UnsupportedImageShapeError(
            f"the image is {width} x {height} pixels; the vision tower takes sides up to "
            f"{MAX_ENGINE_SIDE} pixels"
        )


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def _check_keys(config: Mapping[str, Any], family: str, layout_keys: set[str]) -> None:
    unknown = sorted(set(config) - layout_keys - _GEOMETRY_FREE_KEYS - _SWITCH_KEYS)
    if unknown:
        raise ValueError(
            f"unknown keys in preprocessor_config.json for {family}: {', '.join(unknown)}"
        )
    if config.get("do_resize") not in (None, True):
        raise ValueError("do_resize must be true: the row count assumes the family's resizing")
    if config.get("do_center_crop"):
        raise ValueError("do_center_crop must be off: neither engine crops")


def _pixel_bound(
    config: Mapping[str, Any], size: Mapping[str, Any], key: str, size_key: str
) -> int:
    candidates = (
        (key, config.get(key)),
        (f"size.{key}", size.get(key)),
        (f"size.{size_key}", size.get(size_key)),
    )
    for where, value in candidates:
        if value is not None:
            return _as_int(where, value)
    raise ValueError(f"preprocessor_config.json for Qwen2-VL gives no {key}")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _require_positive(params: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


ImageParams = PixtralImageParams | Qwen2VLImageParams


def visual_layout(width: int, height: int, params: ImageParams) -> VisualLayout:
    """The layout of an image for whichever family `params` belong to."""
    if isinstance(params, PixtralImageParams):
        return pixtral_layout(width, height, params)
    return qwen2_vl_layout(width, height, params)
