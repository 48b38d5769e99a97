from __future__ import annotations

import pytest

from worker.errors import InvalidSpanError
from worker.images.vlm_family import UnsupportedModelError, VlmFamily, detect_family
from worker.span import Span, SpanLayout
from worker.token_range import TokenRange


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
        Span("<image>", TokenRange(1, 1_000_000_000, 9), SpanLayout(8, ((3, 12), (7, 13))))
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
