from __future__ import annotations

import pytest

from worker.errors import InvalidSpanError
from worker.span import ImageGrid, Span, SpanLayout
from worker.token_range import TokenRange
from worker.vlm_family import (
    ImageTokens,
    UnsupportedModelError,
    VlmFamily,
    detect_family,
    pixtral_layout,
    qwen2_vl_layout,
)

PIXTRAL = ImageTokens(image=10, open=None, row_break=12, close=13)
QWEN = ImageTokens(image=90, open=91, row_break=None, close=92)


def test_pixtral_rows_end_with_breaks_and_the_image_with_its_end() -> None:
    layout = pixtral_layout(grid_rows=2, grid_cols=3, tokens=PIXTRAL)
    assert layout.num_rows == 8
    assert layout.text_rows == ((3, 12), (7, 13))
    assert layout.image_row_offsets() == [0, 1, 2, 4, 5, 6]
    assert (layout.num_pre_tokens, layout.num_post_tokens) == (0, 0)


def test_qwen_image_is_enclosed_in_start_and_end() -> None:
    layout = qwen2_vl_layout(ImageGrid(1, 4, 6), merge_size=2, tokens=QWEN)
    assert layout.num_rows == 8
    assert layout.text_rows == ((0, 91), (7, 92))
    assert layout.num_image_rows == 6
    assert (layout.num_pre_tokens, layout.num_post_tokens) == (1, 1)


@pytest.mark.parametrize(
    "bad",
    [
        {"num_rows": 0},
        {"num_rows": 3, "text_rows": ((3, 1),)},
        {"num_rows": 3, "text_rows": ((1, 1), (1, 2))},
        {"num_rows": 3, "text_rows": ((2, 1), (1, 2))},
        {"num_rows": 3, "text_rows": ((0, 1),), "num_pre_tokens": 1, "num_post_tokens": 1},
    ],
)
def test_inconsistent_layouts_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"rows|tokens"):
        SpanLayout(**bad)  # type: ignore[arg-type]


def test_span_and_layout_must_agree_on_length() -> None:
    with pytest.raises(InvalidSpanError, match="lays out 8 rows"):
        Span("<image>", TokenRange(1, 1_000_000_000, 9), pixtral_layout(2, 3, PIXTRAL))
    assert Span("<image>", TokenRange(1, 1_000_000_000, 5)).row_layout.num_image_rows == 5


def test_family_detection() -> None:
    pixtral = {"architectures": ["LlavaForConditionalGeneration"],
               "vision_config": {"model_type": "pixtral"}}
    assert detect_family(pixtral) is VlmFamily.PIXTRAL
    qwen = {"architectures": ["Qwen2VLForConditionalGeneration"]}
    assert detect_family(qwen) is VlmFamily.QWEN2_VL
    clip_llava = {"architectures": ["LlavaForConditionalGeneration"],
                  "vision_config": {"model_type": "clip_vision_model"}}
    with pytest.raises(UnsupportedModelError, match="clip_vision_model"):
        detect_family(clip_llava)
