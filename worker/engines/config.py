"""Which engine an actor runs, on which model, and how to start it; defaults in one place."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from worker.engines.seam import LanguageEngine, VisionEngine


class EngineKind(enum.StrEnum):
    TRANSFORMERS = "transformers"  # CPU; tests and the demo
    EXLLAMAV2 = "exllamav2"  # GPU


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model_dir: str
    kind: EngineKind = EngineKind.TRANSFORMERS
    max_batch_size: int = 8  # requests one generator decodes at once

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {self.max_batch_size}")


def start_vision_engine(config: EngineConfig) -> VisionEngine:
    # Engines import their libraries only here, so the rest of vlmq never does.
    # Each side loads only its own part of the model (worker/engines/exllamav2/engine.py).
    if config.kind is EngineKind.EXLLAMAV2:
        from worker.engines.exllamav2.engine import start_exllamav2_vision

        return start_exllamav2_vision(Path(config.model_dir))
    from worker.engines.transformers.model import load_transformers_vlm
    from worker.engines.transformers.vision import TransformersVision

    return TransformersVision(load_transformers_vlm(config.model_dir))


def start_language_engine(config: EngineConfig) -> LanguageEngine:
    if config.kind is EngineKind.EXLLAMAV2:
        from worker.engines.exllamav2.engine import start_exllamav2_language
        from worker.engines.exllamav2.model import ExLlamaV2Settings

        settings = ExLlamaV2Settings(max_batch_size=config.max_batch_size)
        return start_exllamav2_language(Path(config.model_dir), settings)
    from worker.engines.transformers.language import start_transformers_engine
    from worker.engines.transformers.model import load_transformers_vlm

    return start_transformers_engine(
        load_transformers_vlm(config.model_dir), max_batch_size=config.max_batch_size
    )
