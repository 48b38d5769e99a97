"""Row counts per image size, against the real Hugging Face processors and exllamav2's code.

For every size in a spread (tiny, patch boundaries, extreme aspect ratios) three real
implementations run on a real image: transformers' processor (image processor plus its
token expansion, with a tiny real tokenizer), exllamav2's `preprocess`, and ours. We must
refuse exactly the sizes either of them refuses, take exllamav2's resized size, and produce
the processor's image-token run: its length and where its special tokens sit.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer
from transformers.image_utils import ChannelDimension
from transformers.models.pixtral import image_processing_pil_pixtral as hf_pixtral
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from tests.support.exllamav2_cpu import ExLlamaV2Config
from tests.support.hf_processors import pixtral_processor_class, qwen2_vl_processor
from worker.errors import JobError, UnsupportedImageShapeError
from worker.images.visual_tokens import (
    MAX_ENGINE_SIDE,
    PixtralImageParams,
    Qwen2VLImageParams,
    VisualLayout,
    pixtral_layout,
    qwen2_vl_layout,
)
from worker.span import ImageGrid
from worker.tiny.tokenizer import write_tiny_tokenizer

# Only after tests.support.exllamav2_cpu, which lets exllamav2 import without its CUDA extension.
exl_util = importlib.import_module("exllamav2.vlm.util")
exl_pixtral = importlib.import_module("exllamav2.vlm.processor.pixtral")
exl_qwen2 = importlib.import_module("exllamav2.vlm.processor.qwen2")

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# As the real repos ship them: mistral-community/pixtral-12b, Mistral-Small-3.1, Qwen2-VL-7B.
PIXTRAL_12B_PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": _CLIP_MEAN,
    "image_processor_type": "PixtralImageProcessor",
    "image_std": _CLIP_STD,
    "patch_size": {"height": 16, "width": 16},
    "processor_class": "PixtralProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 1024},
}
MISTRAL_SMALL_PREPROCESSOR = {
    "crop_size": None,
    "data_format": "channels_first",
    "default_to_square": True,
    "device": None,
    "do_center_crop": None,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": _CLIP_MEAN,
    "image_processor_type": "PixtralImageProcessorFast",
    "image_std": _CLIP_STD,
    "input_data_format": None,
    "patch_size": 14,
    "processor_class": "PixtralProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "return_tensors": None,
    "size": {"longest_edge": 1540},
}
MISTRAL_SMALL_CONFIG = {
    "architectures": ["Mistral3ForConditionalGeneration"],
    "spatial_merge_size": 2,
}
QWEN2_VL_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": _CLIP_MEAN,
    "image_std": _CLIP_STD,
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}


def _qwen_with(**changes: Any) -> dict[str, Any]:
    return {**QWEN2_VL_PREPROCESSOR, **changes}


# preprocessor_config.json, config.json, and the processor's (processor_config.json) settings.
PIXTRAL_CASES = {
    "pixtral-12b": (PIXTRAL_12B_PREPROCESSOR, {}, {"patch_size": 16, "spatial_merge_size": 1}),
    "mistral-small-3.1": (
        MISTRAL_SMALL_PREPROCESSOR,
        MISTRAL_SMALL_CONFIG,
        {"patch_size": 14, "spatial_merge_size": 2},
    ),
    "tiny-256": (
        {**PIXTRAL_12B_PREPROCESSOR, "size": {"longest_edge": 256}},
        {},
        {"patch_size": 16, "spatial_merge_size": 1},
    ),
}
QWEN_CASES = {
    "qwen2-vl-7b": QWEN2_VL_PREPROCESSOR,
    "tiny-128-tokens": _qwen_with(max_pixels=128 * 28 * 28),
    # So small a budget that a thin image's short side floors to zero (exllamav2 breaks).
    "one-token": _qwen_with(min_pixels=784, max_pixels=4 * 784),
}

# Sizes run through the whole pipelines, as (width, height).
SPREAD = [
    (1, 1), (2, 3), (13, 900), (900, 13), (4000, 16), (16, 4000), (224, 224), (1000, 700),
    (700, 1000), (333, 777), (15, 15), (16, 16), (17, 17), (27, 27), (28, 28), (29, 29),
    (31, 31), (32, 32), (33, 33), (55, 56), (57, 57), (255, 257), (1023, 1023), (1024, 1024),
    (1025, 1025), (1539, 700), (1541, 30), (1, 2000), (2000, 1), (1, 200), (28, 5600),
    (5600, 28), (27, 5400), (29, 5801), (30, 5000), (512, 3), (3, 1100),
    # Halfway between multiples of 28 (2.5 and 4.5 of them): Python rounds half to even.
    (70, 126),
]  # fmt: skip
# Sizes too large to push pixels through on a CPU in a test: sizes only.
LARGE = [(4000, 3000), (3584, 3584), (3585, 3583), (8192, 8192), (16384, 100), (6000, 4000)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tokenizers")
    loaded = {}
    for family in ("pixtral", "qwen2-vl"):
        write_tiny_tokenizer(root / family, family)
        loaded[family] = AutoTokenizer.from_pretrained(root / family)
    return loaded


# --- the implementations under comparison --------------------------------------------------


def _hf_pixtral(
    tokenizer: Any, preprocessor: Mapping[str, Any], processor_settings: Mapping[str, int]
) -> Any:
    image_processor = hf_pixtral.PixtralImageProcessorPil.from_dict(dict(preprocessor))
    return pixtral_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, **processor_settings
    )


def _image_run(processor: Any, prompt: str, image: Image.Image, run_tokens: set[int]) -> list[int]:
    """The processor's token IDs for the one image: the contiguous run of image tokens."""
    ids = np.asarray(processor(text=[prompt], images=[image])["input_ids"][0]).tolist()
    positions = [index for index, token in enumerate(ids) if token in run_tokens]
    run = ids[positions[0] : positions[-1] + 1]
    assert set(run) <= run_tokens, "the image's tokens are not contiguous"
    return run


def _exl_config(**attributes: Any) -> Any:
    """An ExLlamaV2Config carrying just the attributes its `preprocess` functions read."""
    config = ExLlamaV2Config()
    config.vision_resample = 3
    config.vision_image_mean = _CLIP_MEAN
    config.vision_image_std = _CLIP_STD
    config.vision_rescale_factor = 1 / 255
    for name, value in attributes.items():
        setattr(config, name, value)
    return config


def _exl_pixtral_size(params: PixtralImageParams, image: Image.Image) -> tuple[int, int]:
    config = _exl_config(
        vision_size={"longest_edge": params.longest_edge},
        vision_patch_size={"height": params.patch_size, "width": params.patch_size},
    )
    _, new_size, _, _ = exl_pixtral.preprocess(config, image)
    return tuple(new_size)


def _exl_qwen_size(params: Qwen2VLImageParams, image: Image.Image) -> tuple[int, int]:
    config = _exl_config(
        vision_temporal_patch_size=params.temporal_patch_size,
        vision_spatial_patch_size=params.patch_size,
        vision_spatial_merge_size=params.merge_size,
        vision_min_pixels=params.min_pixels,
        vision_max_pixels=params.max_pixels,
    )
    _, new_size, _, _ = exl_qwen2.preprocess(config, image)
    return tuple(new_size)


def _outcome(compute: Any) -> Any:
    """compute()'s result, or None where it refuses a size (both refuse with ValueError)."""
    try:
        return compute()
    except ValueError:
        return None


def _ours(compute: Any) -> VisualLayout | None:
    try:
        layout: VisualLayout = compute()
    except UnsupportedImageShapeError as error:
        assert isinstance(error, JobError) and "pixels" in str(error)
        return None
    return layout


def _expected_run(layout: VisualLayout, token_ids: Mapping[str, int], fill: int) -> list[int]:
    run = [fill] * layout.num_rows
    for offset, token in layout.text_rows:
        run[offset] = token_ids[token]
    return run


# --- Pixtral --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(PIXTRAL_CASES))
def test_pixtral_matches_exllamav2_and_transformers(case: str, tokenizers: dict[str, Any]) -> None:
    preprocessor, model_config, processor_settings = PIXTRAL_CASES[case]
    params = PixtralImageParams.from_model_configs(preprocessor, model_config)
    tokenizer = tokenizers["pixtral"]
    processor = _hf_pixtral(tokenizer, preprocessor, processor_settings)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("[IMG]", "[IMG_BREAK]", "[IMG_END]")}
    run_tokens = set(ids.values())
    for width, height in SPREAD:
        image = Image.new("RGB", (width, height), (200, 40, 90))
        ours = _ours(partial(pixtral_layout, width, height, params))
        theirs = _outcome(partial(_exl_pixtral_size, params, image))
        hf_run = _outcome(partial(_image_run, processor, "a [IMG] b", image, run_tokens))
        assert (ours is not None) == (theirs is not None and hf_run is not None), (width, height)
        if ours is None or hf_run is None:
            continue
        assert (ours.resized_width, ours.resized_height) == theirs, (width, height)
        # The processor, given the image at our size, lays out exactly our rows.
        resized = image.resize(theirs)
        expected = _expected_run(ours, ids, ids["[IMG]"])
        assert _image_run(processor, "a [IMG] b", resized, run_tokens) == expected
        if params.spatial_merge_size == 2:
            # Both round to two patches: the processor agrees from the original image too.
            assert hf_run == expected, (width, height)
        else:
            # transformers rounds to one patch, exllamav2 to two: at most one patch fewer.
            hf_rows = hf_run.count(ids["[IMG_BREAK]"]) + 1
            hf_cols = len(hf_run) // hf_rows - 1
            assert ours.merged_rows - hf_rows in (0, 1) and ours.merged_cols - hf_cols in (0, 1)


@pytest.mark.parametrize("case", sorted(PIXTRAL_CASES))
def test_pixtral_large_sizes_match_both_resize_rules(case: str) -> None:
    preprocessor, model_config, _ = PIXTRAL_CASES[case]
    params = PixtralImageParams.from_model_configs(preprocessor, model_config)
    edge, multiple = params.longest_edge, params.resize_multiple
    for width, height in LARGE:
        layout = pixtral_layout(width, height, params)
        exl = exl_util.size_to_longest_edge_and_patch_size(
            (width, height), (edge, edge), (multiple, multiple)
        )
        assert (layout.resized_width, layout.resized_height) == exl
        # transformers' rule, fed a zero-copy stand-in of the image's shape.
        shape_only = np.broadcast_to(np.uint8(0), (3, height, width))
        hf_height, hf_width = hf_pixtral.get_resize_output_image_size(
            shape_only, size=edge, patch_size=multiple, input_data_format=ChannelDimension.FIRST
        )
        assert (hf_width, hf_height) == exl
        assert max(layout.resized_width, layout.resized_height) <= edge


def test_pixtral_layout_puts_a_break_after_each_row_and_the_end_last() -> None:
    layout = pixtral_layout(1000, 700, PixtralImageParams())
    # 1000 x 700 fits in 1024; rounded up to 32: 1024 x 704, 64 x 44 patches of 16.
    assert (layout.resized_width, layout.resized_height) == (1024, 704)
    assert (layout.patch_cols, layout.patch_rows, layout.merge_size) == (64, 44, 1)
    assert layout.num_rows == 44 * 65 == layout.num_image_rows + 44
    assert layout.text_rows[0] == (64, "[IMG_BREAK]")
    assert layout.text_rows[-1] == (44 * 65 - 1, "[IMG_END]")
    assert [token for _, token in layout.text_rows].count("[IMG_END]") == 1


def test_pixtral_merge_of_two_halves_each_side() -> None:
    params = PixtralImageParams(patch_size=14, longest_edge=1540, spatial_merge_size=2)
    layout = pixtral_layout(1000, 700, params)
    assert (layout.resized_width, layout.resized_height) == (1008, 700)
    assert (layout.patch_cols, layout.patch_rows) == (72, 50)
    assert (layout.merged_cols, layout.merged_rows) == (36, 25)
    assert layout.num_rows == 25 * 37


def test_pixtral_refuses_a_short_side_that_would_vanish() -> None:
    with pytest.raises(UnsupportedImageShapeError, match="1 x 2000 pixels"):
        pixtral_layout(1, 2000, PixtralImageParams())
    # 2 x 1024 rounds up to 32 x 1024: 64 rows of 2 patches, each row and its break.
    assert pixtral_layout(2, 1024, PixtralImageParams()).num_rows == 64 * 3


# --- Qwen2-VL -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(QWEN_CASES))
def test_qwen2_vl_matches_exllamav2_and_transformers(case: str, tokenizers: dict[str, Any]) -> None:
    preprocessor = QWEN_CASES[case]
    params = Qwen2VLImageParams.from_preprocessor_config(preprocessor)
    tokenizer = tokenizers["qwen2-vl"]
    processor = qwen2_vl_processor(tokenizer, preprocessor)
    names = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in names}
    prompt = "a <|vision_start|><|image_pad|><|vision_end|> b"
    for width, height in SPREAD:
        image = Image.new("RGB", (width, height), (10, 120, 250))
        ours = _ours(partial(qwen2_vl_layout, width, height, params))
        theirs = _outcome(partial(_exl_qwen_size, params, image))
        theirs = None if theirs is not None and 0 in theirs else theirs
        hf_run = _outcome(partial(_image_run, processor, prompt, image, set(ids.values())))
        assert (ours is not None) == (theirs is not None and hf_run is not None), (width, height)
        if ours is None:
            continue
        assert (ours.resized_width, ours.resized_height) == theirs, (width, height)
        assert hf_run == _expected_run(ours, ids, ids["<|image_pad|>"]), (width, height)


@pytest.mark.parametrize("case", sorted(QWEN_CASES))
def test_qwen2_vl_large_sizes_match_both(case: str) -> None:
    preprocessor = QWEN_CASES[case]
    params = Qwen2VLImageParams.from_preprocessor_config(preprocessor)
    image_processor = Qwen2VLImageProcessorPil.from_dict(dict(preprocessor))
    for width, height in LARGE:
        ours = _ours(partial(qwen2_vl_layout, width, height, params))
        bounds = (params.resize_multiple, params.min_pixels, params.max_pixels)
        exl = _outcome(partial(exl_util.smart_resize, (width, height), *bounds))
        exl = None if exl is not None and 0 in exl else exl
        hf = _outcome(partial(image_processor.get_number_of_image_patches, height, width))
        assert (ours is not None) == (exl is not None and hf is not None), (width, height)
        if ours is not None:
            assert (ours.resized_width, ours.resized_height) == exl
            assert ours.patch_rows * ours.patch_cols == hf
            assert ours.resized_width * ours.resized_height <= params.max_pixels


def test_qwen2_vl_layout_wraps_merged_patches_in_start_and_end() -> None:
    params = Qwen2VLImageParams.from_preprocessor_config(QWEN2_VL_PREPROCESSOR)
    layout = qwen2_vl_layout(1000, 700, params)
    # round(1000 / 28) = 36, round(700 / 28) = 25 (half to even): 1008 x 700, 72 x 50 patches.
    assert (layout.resized_width, layout.resized_height) == (1008, 700)
    assert (layout.patch_cols, layout.patch_rows) == (72, 50)
    assert layout.num_image_rows == 36 * 25 == 900
    assert layout.num_rows == 902
    assert layout.text_rows == ((0, "<|vision_start|>"), (901, "<|vision_end|>"))
    assert (layout.num_pre_tokens, layout.num_post_tokens) == (1, 1)


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [
        (27, 400, "at least 28 pixels"),  # transformers would scale it up; exllamav2 refuses
        (1, 1, "at least 28 pixels"),
        (28, 5601, "aspect ratios up to 200"),
        (6000, 29, "aspect ratios up to 200"),
    ],
)
def test_qwen2_vl_refuses_shapes_the_engine_cannot_take(
    width: int, height: int, reason: str
) -> None:
    with pytest.raises(UnsupportedImageShapeError, match=reason):
        qwen2_vl_layout(width, height, Qwen2VLImageParams())


def test_qwen2_vl_refuses_a_side_that_floors_to_zero_under_max_pixels() -> None:
    params = Qwen2VLImageParams(min_pixels=784, max_pixels=4 * 784)
    with pytest.raises(UnsupportedImageShapeError, match="vanish"):
        qwen2_vl_layout(28, 5000, params)


# --- shared rules ---------------------------------------------------------------------------


def test_sides_beyond_the_vision_tower_are_refused_and_nonsense_sizes_are_a_bug() -> None:
    for compute in (
        lambda: pixtral_layout(MAX_ENGINE_SIDE + 1, 1000, PixtralImageParams()),
        lambda: qwen2_vl_layout(1000, MAX_ENGINE_SIDE + 1, Qwen2VLImageParams()),
    ):
        with pytest.raises(UnsupportedImageShapeError, match=str(MAX_ENGINE_SIDE)):
            compute()
    with pytest.raises(ValueError, match="positive"):
        pixtral_layout(0, 10, PixtralImageParams())


def test_span_layout_carries_token_ids_grid_and_exllamav2_pre_post(
    tokenizers: dict[str, Any],
) -> None:
    tokenizer = tokenizers["pixtral"]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("[IMG_BREAK]", "[IMG_END]")}
    layout = pixtral_layout(64, 32, PixtralImageParams())
    span_layout = layout.span_layout(ids)
    # 2 rows of 4 patches: [4 image rows, BREAK, 4 image rows, END].
    assert span_layout.num_rows == 10
    assert span_layout.text_rows == ((4, ids["[IMG_BREAK]"]), (9, ids["[IMG_END]"]))
    assert span_layout.image_row_offsets() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert span_layout.grid == ImageGrid(frames=1, height=2, width=4)
    assert (span_layout.num_pre_tokens, span_layout.num_post_tokens) == (0, 0)
    with pytest.raises(ValueError, match=r"\[IMG_END\]"):
        layout.span_layout({"[IMG_BREAK]": 12})


# --- reading preprocessor_config.json -------------------------------------------------------


def test_reads_the_real_repos_configs() -> None:
    assert PixtralImageParams.from_preprocessor_config(PIXTRAL_12B_PREPROCESSOR) == (
        PixtralImageParams(patch_size=16, longest_edge=1024, spatial_merge_size=1)
    )
    assert PixtralImageParams.from_model_configs(
        MISTRAL_SMALL_PREPROCESSOR, MISTRAL_SMALL_CONFIG
    ) == PixtralImageParams(patch_size=14, longest_edge=1540, spatial_merge_size=2)
    assert Qwen2VLImageParams.from_preprocessor_config(QWEN2_VL_PREPROCESSOR) == (
        Qwen2VLImageParams(min_pixels=3136, max_pixels=12845056)
    )


def test_qwen_pixel_bounds_fall_back_to_size_and_top_level_wins() -> None:
    only_size = {k: v for k, v in QWEN2_VL_PREPROCESSOR.items() if "pixels" not in k}
    only_size["size"] = {"shortest_edge": 1000, "longest_edge": 50000}
    params = Qwen2VLImageParams.from_preprocessor_config(only_size)
    assert (params.min_pixels, params.max_pixels) == (1000, 50000)
    both = {**only_size, "min_pixels": 2000, "max_pixels": 60000}
    params = Qwen2VLImageParams.from_preprocessor_config(both)
    assert (params.min_pixels, params.max_pixels) == (2000, 60000)
    # transformers reads the same dict the same way.
    hf = Qwen2VLImageProcessorPil.from_dict(both)
    assert (hf.size["shortest_edge"], hf.size["longest_edge"]) == (2000, 60000)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**PIXTRAL_12B_PREPROCESSOR, "do_image_splitting": True}, "unknown keys.*do_image_split"),
        ({**PIXTRAL_12B_PREPROCESSOR, "size": {"height": 512, "width": 512}}, "longest_edge"),
        ({**PIXTRAL_12B_PREPROCESSOR, "patch_size": {"height": 16, "width": 14}}, "square"),
        ({**PIXTRAL_12B_PREPROCESSOR, "patch_size": "16"}, "integer"),
        ({**PIXTRAL_12B_PREPROCESSOR, "do_resize": False}, "do_resize"),
        ({**PIXTRAL_12B_PREPROCESSOR, "do_center_crop": True}, "do_center_crop"),
        ({**PIXTRAL_12B_PREPROCESSOR, "size": {"longest_edge": 1000}}, "multiple of 32"),
    ],
)
def test_bad_pixtral_configs_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PixtralImageParams.from_preprocessor_config(config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({k: v for k, v in QWEN2_VL_PREPROCESSOR.items() if k != "merge_size"}, "merge_size"),
        ({k: v for k, v in QWEN2_VL_PREPROCESSOR.items() if k != "max_pixels"}, "max_pixels"),
        (_qwen_with(min_pixels=10_000, max_pixels=5_000), "exceeds max_pixels"),
        (_qwen_with(patch_size=True), "integer"),
        (_qwen_with(fps=2.0), "unknown keys.*fps"),
        (_qwen_with(merge_size=0), "positive"),
    ],
)
def test_bad_qwen_configs_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Qwen2VLImageParams.from_preprocessor_config(config)


def test_pixtral_merge_size_is_what_exllamav2_supports() -> None:
    with pytest.raises(ValueError, match="1 or 2"):
        PixtralImageParams(spatial_merge_size=4)
    assert (
        PixtralImageParams.from_model_configs(PIXTRAL_12B_PREPROCESSOR, {}).spatial_merge_size == 1
    )
