"""The vision side of the transformers engine: an image becomes its image rows and layout.

The layout comes from `worker/images/visual_tokens.py`, the rule both engines share (exllamav2's
resizing). transformers' processors round Pixtral images to one patch where exllamav2 rounds
to two, so the image is resized to the shared size first, bicubically as both references
resize; the processor then keeps it. docs/PREPROCESSING.md says where the rules differ and what
that costs; tests/worker/engines/transformers/test_preprocessing_reference.py holds the pixels
to exllamav2's and transformers' own.
"""

from __future__ import annotations

import torch
from PIL import Image

from worker.engines.seam import ImageFeatures
from worker.engines.transformers.model import TransformersVlm
from worker.images.visual_tokens import VisualLayout, visual_layout
from worker.images.vlm_family import VlmFamily
from worker.span import SpanLayout


class TransformersVision:
    def __init__(self, vlm: TransformersVlm) -> None:
        self.vlm = vlm

    def layout_for(self, width: int, height: int) -> SpanLayout:
        return self._span_layout(visual_layout(width, height, self.vlm.image_params))

    def prepare(self, image: Image.Image) -> Image.Image:
        """The image at the size the vision tower sees it."""
        layout = visual_layout(image.width, image.height, self.vlm.image_params)
        size = (layout.resized_width, layout.resized_height)
        return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)

    def embed(self, image: Image.Image) -> ImageFeatures:
        layout = self.layout_for(image.width, image.height)
        processed = self.vlm.image_processor(images=[self.prepare(image)], return_tensors="pt")
        config = self.vlm.model.config
        with torch.inference_mode():
            if self.vlm.family is VlmFamily.PIXTRAL:
                output = self.vlm.model.get_image_features(
                    pixel_values=processed["pixel_values"],
                    image_sizes=processed["image_sizes"],
                    vision_feature_layer=config.vision_feature_layer,
                    vision_feature_select_strategy=config.vision_feature_select_strategy,
                )
            else:
                output = self.vlm.model.get_image_features(
                    pixel_values=processed["pixel_values"],
                    image_grid_thw=processed["image_grid_thw"],
                )
        rows = output.pooler_output[0]  # [num_image_rows, hidden]
        if rows.shape[0] != layout.num_image_rows:
            raise RuntimeError(
                f"the {self.vlm.family} tower gave {rows.shape[0]} rows for a "
                f"{image.width}x{image.height} image; its layout expects {layout.num_image_rows}"
            )
        return ImageFeatures(layout=layout, rows=rows.to(torch.float16).contiguous())

    def _span_layout(self, layout: VisualLayout) -> SpanLayout:
        return layout.span_layout(self.vlm.tokenizer.special_pieces)
