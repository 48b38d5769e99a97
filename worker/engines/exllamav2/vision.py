"""The vision side of the exllamav2 engine: an image becomes its image rows and layout.

The layout is `worker/images/visual_tokens.py`'s, which follows exllamav2's own resize rules
(`exllamav2/vlm/processor/{pixtral,qwen2}.py`; the tests hold the two together), so it is known
without running the tower. exllamav2's `postprocess` is not called: it lays Pixtral's rows out
differently from the reference processor (see `worker/images/vlm_family.py`), and the special-token
rows are filled on the generator side (`worker/engines/exllamav2/embeddings.py`).
"""

from __future__ import annotations

import torch
from PIL import Image

from worker.engines.exllamav2.model import ExLlamaV2Vlm
from worker.engines.seam import ImageFeatures
from worker.errors import UnsupportedImageShapeError
from worker.images.visual_tokens import visual_layout
from worker.span import SpanLayout


class ExLlamaV2Vision:
    def __init__(self, vlm: ExLlamaV2Vlm) -> None:
        self.vlm = vlm

    def layout_for(self, width: int, height: int) -> SpanLayout:
        layout = visual_layout(width, height, self.vlm.image_params)
        if max(width, height) > self.vlm.config.vision_max_size:
            raise UnsupportedImageShapeError(
                f"the image is {width} x {height} pixels; the vision tower takes sides up to "
                f"{self.vlm.config.vision_max_size} pixels"
            )
        return layout.span_layout(self.vlm.text_tokenizer.special_pieces)

    def embed(self, image: Image.Image) -> ImageFeatures:
        layout = self.layout_for(image.width, image.height)
        config = self.vlm.config
        tower = self.vlm.vision_tower
        pixels, (width, height), grid_thw, _ = tower.preprocess_func(config, image)
        patches = (
            height // config.vision_patch_size["height"],
            width // config.vision_patch_size["width"],
        )
        with torch.inference_mode():
            output = tower.process(pixels, patches, thw_grid=grid_thw)
        # output: [1, num_image_rows, hidden] on the tower's GPU
        rows = output[0].to("cpu", torch.float16).contiguous()
        if rows.shape[0] != layout.num_image_rows:
            raise RuntimeError(
                f"the {self.vlm.family} tower gave {rows.shape[0]} rows for a "
                f"{image.width}x{image.height} image; its layout expects {layout.num_image_rows}"
            )
        return ImageFeatures(layout=layout, rows=rows)
