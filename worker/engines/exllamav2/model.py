"""A Hugging Face VLM directory loaded with exllamav2 (the GPU engine).

exllamav2 is imported only inside functions here and in the other `worker/exllamav2_*`
modules, so the rest of vlmq imports them on machines without exllamav2 or CUDA. Importing
exllamav2 builds its CUDA extension on first use (minutes); see `scripts/gpu-check`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.images.visual_tokens import ImageParams
from worker.images.vlm_family import VlmFamily, detect_family, read_image_params

# exllamav2's paged cache is made of pages of this many tokens (`PAGED_PAGE_SIZE`).
PAGE_SIZE = 256

# Token IDs -> their rows of the language model's input embedding table: [n] -> [n, hidden].
EmbedTokens = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class ExLlamaV2Settings:
    """How the exllamav2 engine sizes itself; every default lives here."""

    # KV-cache size in tokens, shared by every running request (exllamav2: a multiple of 256).
    cache_tokens: int = 32_768
    # Longest prompt plus completion of one request; None: the model's, at most cache_tokens.
    max_seq_len: int | None = None
    max_batch_size: int = 32  # requests decoded together
    # Prompt tokens per prefill forward pass; a multiple of 256 in paged mode. Smaller chunks
    # interrupt running requests for less time when a long prompt joins.
    max_chunk_size: int = 2048
    # Paged attention (batching and the prefix cache across requests) needs flash-attn >= 2.5.7.
    # None: paged when it is installed; unpaged runs one request at a time.
    paged: bool | None = None
    # Assembled image embeddings kept for reuse, by token range (see `embeddings.py`).
    embedding_cache_bytes: int = 256 * 2**20
    num_recent_results: int = 1024  # finished requests whose cache use is kept for statistics

    def __post_init__(self) -> None:
        if self.cache_tokens <= 0 or self.cache_tokens % PAGE_SIZE:
            raise ValueError(f"cache_tokens must be a positive multiple of {PAGE_SIZE}")
        if self.max_chunk_size <= 0 or self.max_chunk_size % PAGE_SIZE:
            raise ValueError(f"max_chunk_size must be a positive multiple of {PAGE_SIZE}")
        if self.max_seq_len is not None and not 0 < self.max_seq_len <= self.cache_tokens:
            raise ValueError("max_seq_len must be positive and fit in cache_tokens")
        for name in ("max_batch_size", "embedding_cache_bytes", "num_recent_results"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class ExLlamaV2Vlm:
    """One model directory as exllamav2 reads it; weights on the GPU when `is_loaded`."""

    model_dir: Path
    family: VlmFamily
    config: Any  # ExLlamaV2Config, sized by the settings
    model: Any  # ExLlamaV2
    vision_tower: Any  # ExLlamaV2VisionTower
    tokenizer: Any  # ExLlamaV2Tokenizer: decodes completions and matches stop strings
    cache: Any  # ExLlamaV2Cache, or None when not loaded
    text_tokenizer: HFTextTokenizer  # encodes prompts; proven equal to exllamav2's encode
    image_token_id: int  # the image placeholder in the model's config (reference layouts)
    image_params: ImageParams  # what decides image layouts (worker/images/visual_tokens.py)
    eos_token_ids: frozenset[int]  # every token that ends a completion
    is_loaded: bool

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @functools.cached_property
    def embed_tokens(self) -> EmbedTokens:
        """The text rows' source: exllamav2's embedding module, or the weight file unloaded."""
        if self.is_loaded:
            # What exllamav2's own postprocess calls for [IMG_BREAK] and <|vision_start|>.
            forward: EmbedTokens = self.model.modules[0].forward
            return forward
        table = self._embedding_weight()
        return lambda ids: torch.nn.functional.embedding(ids, table)

    def _embedding_weight(self) -> torch.Tensor:
        from safetensors import safe_open

        key = f"{self.model.modules[0].key}.weight"
        with safe_open(self.config.tensor_file_map[key], framework="pt") as weights:
            weight: torch.Tensor = weights.get_tensor(key)
        return weight


def has_paged_attention() -> bool:
    """Whether exllamav2 found a flash-attn that can serve its paged cache."""
    from exllamav2 import attn

    return bool(attn.has_flash_attn_with_paged)


def load_exllamav2_vlm(
    model_dir: Path | str, settings: ExLlamaV2Settings | None = None, *, load_weights: bool = True
) -> ExLlamaV2Vlm:
    """Read a model directory; with `load_weights`, put the model and vision tower on the GPU.

    Without weights everything but the forward passes works (config, tokenizer, layouts,
    embedding placement, jobs), which is what a machine without CUDA can check.
    """
    from exllamav2 import (
        ExLlamaV2,
        ExLlamaV2Cache,
        ExLlamaV2Config,
        ExLlamaV2Tokenizer,
        ExLlamaV2VisionTower,
    )

    settings = settings or ExLlamaV2Settings()
    directory = Path(model_dir)
    family = detect_family(json.loads((directory / "config.json").read_text()))
    config = ExLlamaV2Config(str(directory))
    config.max_seq_len = min(config.max_seq_len, settings.max_seq_len or settings.cache_tokens)
    config.max_input_len = settings.max_chunk_size
    config.max_attention_size = settings.max_chunk_size**2
    model = ExLlamaV2(config)
    vision_tower = ExLlamaV2VisionTower(config)
    tokenizer = ExLlamaV2Tokenizer(config)
    cache = None
    if load_weights:
        vision_tower.load(progress=False)
        cache = ExLlamaV2Cache(model, max_seq_len=settings.cache_tokens, lazy=True)
        model.load_autosplit(cache, progress=False)
    return ExLlamaV2Vlm(
        model_dir=directory,
        family=family,
        config=config,
        model=model,
        vision_tower=vision_tower,
        tokenizer=tokenizer,
        cache=cache,
        text_tokenizer=HFTextTokenizer.from_model_dir(directory),
        image_token_id=_image_token_id(directory),
        image_params=read_image_params(directory, family),
        eos_token_ids=_eos_token_ids(config, tokenizer),
        is_loaded=load_weights,
    )


def _image_token_id(directory: Path) -> int:
    raw = json.loads((directory / "config.json").read_text())
    # Llava names it image_token_index; Qwen2-VL image_token_id.
    return int(raw.get("image_token_id", raw.get("image_token_index")))


def _eos_token_ids(config: Any, tokenizer: Any) -> frozenset[int]:
    # exllamav2's tokenizer knows one EOS; generation_config.json may name several (Qwen2-VL
    # stops at <|im_end|> and <|endoftext|>), and each must end a completion.
    generation_config = getattr(config, "generation_config", None) or {}
    found = set(generation_config.get("eos_token_id") or [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return frozenset(int(token_id) for token_id in found)
