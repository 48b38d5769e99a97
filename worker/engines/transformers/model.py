"""A Hugging Face VLM directory loaded with transformers, on the CPU (the test and demo engine).

transformers is imported here and in the modules that use this one, and only lazily from the
rest of vlmq (the engine seam hides it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.images.visual_tokens import ImageParams, PixtralImageParams
from worker.images.vlm_family import VlmFamily, detect_family, read_image_params


@dataclass(frozen=True)
class TransformersVlm:
    family: VlmFamily
    model: Any  # LlavaForConditionalGeneration | Qwen2VLForConditionalGeneration
    image_processor: Any  # the family's (PIL) image processor
    tokenizer: HFTextTokenizer
    image_token_id: int  # the placeholder its processor repeats once per image row
    eos_token_ids: frozenset[int]
    vocab_size: int  # the tokenizer's; the model's table may be padded beyond it
    max_context: int
    image_params: ImageParams  # what decides an image's layout, read as exllamav2 reads it

    @property
    def merge_size(self) -> int:
        """Patches merged per side into one image row (Qwen2-VL 2; Pixtral-12B 1)."""
        params = self.image_params
        return params.spatial_merge_size if isinstance(params, PixtralImageParams) else (
            params.merge_size
        )

    @property
    def embed_tokens(self) -> torch.nn.Module:
        module: torch.nn.Module = self.model.get_input_embeddings()
        return module


def load_transformers_vlm(model_dir: Path | str, max_context: int | None = None) -> TransformersVlm:
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    directory = Path(model_dir)
    config = json.loads((directory / "config.json").read_text())
    family = detect_family(config)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    image_processor = AutoImageProcessor.from_pretrained(directory)
    tokenizer = HFTextTokenizer.from_model_dir(directory)
    text_config = config.get("text_config", config)
    return TransformersVlm(
        family=family,
        model=model,
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_token_id=model.config.image_token_id,
        eos_token_ids=_eos_token_ids(directory, config),
        vocab_size=tokenizer.backend.get_vocab_size(with_added_tokens=True),
        max_context=max_context or int(text_config.get("max_position_embeddings", 4096)),
        image_params=read_image_params(directory, family),
    )


def _eos_token_ids(directory: Path, config: dict[str, Any]) -> frozenset[int]:
    """Every ID that ends generation: the configs' EOS IDs (one or a list)."""
    found: set[int] = set()
    sources = [config, config.get("text_config") or {}]
    generation_config = directory / "generation_config.json"
    if generation_config.exists():
        sources.append(json.loads(generation_config.read_text()))
    for source in sources:
        value = source.get("eos_token_id")
        found.update(value if isinstance(value, list) else [value] if value is not None else [])
    return frozenset(found)
