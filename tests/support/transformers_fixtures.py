"""Tiny models loaded by the transformers engine, and sample images, for engine tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from worker.engines.transformers.model import TransformersVlm, load_transformers_vlm
from worker.tiny.model import write_tiny_model

_loaded: dict[str, TransformersVlm] = {}


def tiny_vlm(family: str, directory: Path) -> TransformersVlm:
    """One loaded tiny model per family for the whole session (loading takes a second)."""
    if family not in _loaded:
        model_dir = directory / family
        write_tiny_model(model_dir, family)  # type: ignore[arg-type]
        _loaded[family] = load_transformers_vlm(model_dir)
    return _loaded[family]


def pattern_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic image with structure, so different images embed differently."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [((x * seed) % 256, (y * (seed + 3)) % 256, ((x + y) * 7) % 256)
         for y in range(height) for x in range(width)]
    )
    return image
