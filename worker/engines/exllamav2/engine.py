"""The exllamav2 engine (GPU): either side of the engine seam over one model directory.

Each side loads only what it runs: the vision side the vision tower and its projector (no text
model, no KV cache, no generator thread), the language side the text model, its cache and the
thread that drives the generator (no vision tower). The parts, beside this module: `model`
(loading, settings), `vision` (layouts and image rows), `embeddings` (rows placed at the
allocator's ranges), `jobs` (requests to jobs, result dicts to results) and `language` (the
thread that drives the generator).
"""

from __future__ import annotations

from pathlib import Path

from worker.engines.exllamav2.language import ExLlamaV2Language, GeneratorSeam
from worker.engines.exllamav2.model import (
    ExLlamaV2Settings,
    Part,
    WeightLoader,
    load_exllamav2_vlm,
)
from worker.engines.exllamav2.vision import ExLlamaV2Vision


def start_exllamav2_vision(
    model_dir: Path | str,
    settings: ExLlamaV2Settings | None = None,
    *,
    loader: WeightLoader | None = None,
) -> ExLlamaV2Vision:
    """Load the vision tower and its projector onto the GPU."""
    return ExLlamaV2Vision(load_exllamav2_vlm(model_dir, settings, parts=Part.VISION,
                                              loader=loader))


def start_exllamav2_language(
    model_dir: Path | str,
    settings: ExLlamaV2Settings | None = None,
    *,
    loader: WeightLoader | None = None,
    generator: GeneratorSeam | None = None,
) -> ExLlamaV2Language:
    """Load the text model and its cache onto the GPU; start the thread that drives them.

    `generator`: the declared seam (`GeneratorSeam`); None builds exllamav2's own.
    """
    settings = settings or ExLlamaV2Settings()
    vlm = load_exllamav2_vlm(model_dir, settings, parts=Part.LANGUAGE, loader=loader)
    return ExLlamaV2Language(vlm, settings, generator=generator)
