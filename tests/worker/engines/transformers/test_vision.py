from __future__ import annotations

import pytest
import torch

from tests.support.transformers_fixtures import pattern_image
from worker.engines.transformers.model import TransformersVlm
from worker.engines.transformers.vision import TransformersVision
from worker.errors import UnsupportedImageShapeError
from worker.images.vlm_family import VlmFamily


@pytest.mark.parametrize("size", [(28, 28), (33, 33), (70, 45), (45, 70), (500, 30), (30, 500)])
def test_layout_is_known_before_the_tower_runs(
    vlm: TransformersVlm, size: tuple[int, int]
) -> None:
    vision = TransformersVision(vlm)
    features = vision.embed(pattern_image(*size, seed=2))
    assert vision.layout_for(*size) == features.layout
    hidden = vlm.model.config.text_config.hidden_size
    assert features.rows.shape == (features.layout.num_image_rows, hidden)
    assert features.rows.dtype == torch.float16 and features.rows.device.type == "cpu"
    assert torch.isfinite(features.rows).all()


def test_different_images_embed_differently(vlm: TransformersVlm) -> None:
    vision = TransformersVision(vlm)
    a = vision.embed(pattern_image(40, 40, seed=1)).rows
    b = vision.embed(pattern_image(40, 40, seed=2)).rows
    assert a.shape == b.shape and not torch.equal(a, b)


def test_shapes_the_model_cannot_take_are_refused(vlm: TransformersVlm) -> None:
    vision = TransformersVision(vlm)
    refused = (5, 5) if vlm.family is VlmFamily.QWEN2_VL else (1, 4000)
    with pytest.raises(UnsupportedImageShapeError, match="pixels"):
        vision.layout_for(*refused)
    with pytest.raises(UnsupportedImageShapeError, match="pixels"):
        vision.embed(pattern_image(*refused, seed=1))
