"""The exllamav2 engine (GPU): both sides of the engine seam over one loaded model directory.

The parts: `exllamav2_model` (loading, settings), `exllamav2_vision` (layouts and image rows),
`exllamav2_embeddings` (rows placed at the allocator's ranges), `exllamav2_jobs` (requests to
jobs, result dicts to results) and `exllamav2_language` (the thread that drives the generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.exllamav2_language import ExLlamaV2Language
from worker.exllamav2_model import ExLlamaV2Settings, ExLlamaV2Vlm, load_exllamav2_vlm
from worker.exllamav2_vision import ExLlamaV2Vision


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
