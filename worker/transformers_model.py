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

from worker.text_tokenizer import HFTextTokenizer
from worker.visual_tokens import ImageParams, PixtralImageParams, Qwen2VLImageParams
from worker.vlm_family import ImageTokens, VlmFamily, detect_family


@dataclass(frozen=True)
class TransformersVlm:
    family: VlmFamily
    model: Any  # LlavaForConditionalGeneration | Qwen2VLForConditionalGeneration
    image_processor: Any  # the family's (PIL) image processor
    tokenizer: HFTextTokenizer
    image_tokens: ImageTokens
    eos_token_ids: frozenset[int]
    vocab_size: int  # the tokenizer's; the model's table may be padded beyond it
    max_context: int
    merge_size: int  # patches merged into one image row (Qwen2-VL 2; Pixtral-12B 1)
    image_params: ImageParams  # what decides an image's layout, read as exllamav2 reads it

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
    preprocessor_config = json.loads((directory / "preprocessor_config.json").read_text())
    image_params: ImageParams
    pieces = tokenizer.special_pieces
    text_config = config.get("text_config", config)
    if family is VlmFamily.PIXTRAL:
        image_tokens = ImageTokens(
            image=model.config.image_token_id,
            open=None,
            row_break=pieces["[IMG_BREAK]"],
            close=pieces["[IMG_END]"],
        )
        merge_size = int(config.get("spatial_merge_size", 1))
        image_params = PixtralImageParams.from_model_configs(preprocessor_config, config)
    else:
        image_tokens = ImageTokens(
            image=model.config.image_token_id,
            open=model.config.vision_start_token_id,
            row_break=None,
            close=model.config.vision_end_token_id,
        )
        merge_size = int(config["vision_config"].get("spatial_merge_size", 2))
        image_params = Qwen2VLImageParams.from_preprocessor_config(preprocessor_config)
    return TransformersVlm(
        family=family,
        model=model,
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_tokens=image_tokens,
        eos_token_ids=_eos_token_ids(directory, config),
        vocab_size=tokenizer.backend.get_vocab_size(with_added_tokens=True),
        max_context=max_context or int(text_config.get("max_position_embeddings", 4096)),
        merge_size=merge_size,
        image_params=image_params,
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
