"""The exllamav2 engine (GPU): both sides of the engine seam over one loaded model directory.

The parts, beside this module: `model` (loading, settings), `vision` (layouts and image rows),
`embeddings` (rows placed at the allocator's ranges), `jobs` (requests to jobs, result dicts to
results) and `language` (the thread that drives the generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.engines.exllamav2.language import ExLlamaV2Language
from worker.engines.exllamav2.model import ExLlamaV2Settings, ExLlamaV2Vlm, load_exllamav2_vlm
from worker.engines.exllamav2.vision import ExLlamaV2Vision


@dataclass(frozen=True)
class ExLlamaV2Engine:
    vlm: ExLlamaV2Vlm
    vision: ExLlamaV2Vision
    language: ExLlamaV2Language


def start_exllamav2_engine(
    model_dir: Path | str, settings: ExLlamaV2Settings | None = None
) -> ExLlamaV2Engine:
    """Load the model onto the GPU and start the thread that drives its generator."""
    settings = settings or ExLlamaV2Settings()
    vlm = load_exllamav2_vlm(model_dir, settings)
    return ExLlamaV2Engine(vlm, ExLlamaV2Vision(vlm), ExLlamaV2Language(vlm, settings))
