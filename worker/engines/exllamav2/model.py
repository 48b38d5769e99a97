"""A Hugging Face VLM directory loaded with exllamav2 (the GPU engine).

exllamav2 is imported only inside functions here and in the other modules of this package, so
the rest of vlmq imports them on machines without exllamav2 or CUDA. Importing exllamav2 builds
its CUDA extension on first use (minutes); see `scripts/gpu-check`.

An actor loads only the side it runs (`Part`): a vision actor the vision tower and its projector,
a generator actor the text model and its KV cache. The settings are checked against the model
before any weight moves, as exllamav2's generator would check them after (`check_settings`).
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.images.visual_tokens import ImageParams
from worker.images.vlm_family import VlmFamily, detect_family, read_image_params

# exllamav2's paged cache is made of pages of this many tokens (`PAGED_PAGE_SIZE`).
PAGE_SIZE = 256
# Tokens per sequence that exllamav2's generator evaluates in one decode step (`max_q_size`, which
# vlmq leaves at its default), and the batch size the model's buffers are sized for
# (`ExLlamaV2Config.max_batch_size`, also left at its default).
GENERATOR_MAX_Q_SIZE = 8
MODEL_MAX_BATCH_SIZE = 1

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


class Part(enum.Flag):
    """The sides of a model directory that one process serves."""

    VISION = enum.auto()  # the vision tower and its projector: image rows
    LANGUAGE = enum.auto()  # the text model and its KV cache: completions
    ALL = VISION | LANGUAGE


class WeightLoader(Protocol):
    """What puts weights on the GPU; a recording fake stands in on a CPU (tests)."""

    def load_vision(self, vision_tower: Any) -> None:
        """Load an `ExLlamaV2VisionTower` (its projector is part of it)."""

    def load_language(self, model: Any, cache_tokens: int) -> Any:
        """Load an `ExLlamaV2` and return its `ExLlamaV2Cache` of `cache_tokens` tokens."""


class ExLlamaV2WeightLoader:
    def load_vision(self, vision_tower: Any) -> None:
        vision_tower.load(progress=False)

    def load_language(self, model: Any, cache_tokens: int) -> Any:
        from exllamav2 import ExLlamaV2Cache

        # Lazy: load_autosplit allocates the cache layer by layer beside the weights.
        cache = ExLlamaV2Cache(model, max_seq_len=cache_tokens, lazy=True)
        model.load_autosplit(cache, progress=False)
        return cache


@dataclass(frozen=True)
class ExLlamaV2Vlm:
    """One model directory as exllamav2 reads it; the weights of `loaded` on the GPU.

    `parts` are the sides this process serves: the vision tower exists only with VISION, the
    text model only with LANGUAGE. `loaded` is `parts`, or empty where no weights were loaded
    (the dry run, the CPU tests).
    """

    model_dir: Path
    family: VlmFamily
    config: Any  # ExLlamaV2Config, sized by the settings
    model: Any  # ExLlamaV2, or None without Part.LANGUAGE
    vision_tower: Any  # ExLlamaV2VisionTower, or None without Part.VISION
    tokenizer: Any  # ExLlamaV2Tokenizer: decodes completions and matches stop strings
    cache: Any  # ExLlamaV2Cache, or None unless the text model is loaded
    text_tokenizer: HFTextTokenizer  # encodes prompts; proven equal to exllamav2's encode
    image_token_id: int  # the image placeholder in the model's config (reference layouts)
    image_params: ImageParams  # what decides image layouts (worker/images/visual_tokens.py)
    eos_token_ids: frozenset[int]  # every token that ends a completion
    parts: Part
    loaded: Part

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def is_loaded(self) -> bool:
        return bool(self.loaded)

    @functools.cached_property
    def embed_tokens(self) -> EmbedTokens:
        """The text rows' source: exllamav2's embedding module, or the weight file unloaded."""
        if self.model is None:
            raise RuntimeError("this process loaded no text model (Part.LANGUAGE)")
        if Part.LANGUAGE in self.loaded:
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
    model_dir: Path | str,
    settings: ExLlamaV2Settings | None = None,
    *,
    parts: Part = Part.ALL,
    load_weights: bool = True,
    loader: WeightLoader | None = None,
) -> ExLlamaV2Vlm:
    """Read a model directory for `parts`; with `load_weights`, put their weights on the GPU.

    Without weights everything but the forward passes works (config, tokenizer, layouts,
    embedding placement, jobs), which is what a machine without CUDA can check. With
    Part.LANGUAGE the settings are checked against the model first, weights or not.
    """
    from exllamav2 import ExLlamaV2, ExLlamaV2Config, ExLlamaV2Tokenizer, ExLlamaV2VisionTower

    settings = settings or ExLlamaV2Settings()
    loader = loader or ExLlamaV2WeightLoader()
    directory = Path(model_dir)
    family = detect_family(json.loads((directory / "config.json").read_text()))
    config = ExLlamaV2Config(str(directory))
    model_context = int(config.max_seq_len)  # the model's max_position_embeddings
    config.max_seq_len = min(model_context, settings.max_seq_len or settings.cache_tokens)
    config.max_input_len = settings.max_chunk_size
    config.max_attention_size = settings.max_chunk_size**2
    model = vision_tower = cache = None
    if Part.LANGUAGE in parts:
        check_settings(settings, model_context, config)
        model = ExLlamaV2(config)
    if Part.VISION in parts:
        vision_tower = ExLlamaV2VisionTower(config)
    tokenizer = ExLlamaV2Tokenizer(config)
    if load_weights and vision_tower is not None:
        loader.load_vision(vision_tower)
    if load_weights and model is not None:
        cache = loader.load_language(model, settings.cache_tokens)
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
        parts=parts,
        loaded=parts if load_weights else Part(0),
    )


def check_settings(settings: ExLlamaV2Settings, model_context: int, config: Any) -> None:
    """Refuse, with a reason, settings that `ExLlamaV2DynamicGenerator.__init__` (0.3.2) would
    fail an assert on, once the model is loaded; `config` is sized by the settings.

    Its asserts, in its order, and what vlmq checks for each:
    - paged mode needs flash-attn >= 2.5.7 (`assert_paged_attn`): `paged=True` without it;
    - `max_batch_size * max_q_size <= config.max_batch_size * config.max_input_len`: with both
      config values as vlmq leaves them (1, and the chunk size cut to the context, below);
    - the cache's batch size is 1 and its length a multiple of 256: vlmq builds it so, and
      `ExLlamaV2Settings` holds cache_tokens to multiples of 256;
    - `max_chunk_size <= config.max_input_len`, which `load_autosplit` has cut to
      `config.max_seq_len` (the model's context, capped by max_seq_len or cache_tokens);
    - paged, `max_chunk_size % 256 == 0`: `ExLlamaV2Settings` holds it.
    """
    if settings.paged and not has_paged_attention():
        raise ValueError(
            "paged=True needs flash-attn >= 2.5.7, which exllamav2 did not find; "
            "leave paged unset to run unpaged, one request at a time"
        )
    context = int(config.max_seq_len)
    if settings.max_chunk_size > context:
        cap = "max_seq_len" if settings.max_seq_len else "cache_tokens"
        raise ValueError(
            f"max_chunk_size {settings.max_chunk_size} exceeds the context of {context} tokens "
            f"(the model's {model_context}, {cap} {settings.max_seq_len or settings.cache_tokens})"
            f"; exllamav2's prefill chunks must fit the context: lower max_chunk_size"
        )
    # config.max_input_len is max_chunk_size, which fits the context (above).
    needed = settings.max_batch_size * GENERATOR_MAX_Q_SIZE
    if needed > MODEL_MAX_BATCH_SIZE * settings.max_chunk_size:
        raise ValueError(
            f"max_batch_size {settings.max_batch_size} needs {GENERATOR_MAX_Q_SIZE} tokens per "
            f"request in each decode step, {needed} in all, more than max_chunk_size "
            f"{settings.max_chunk_size}: lower max_batch_size or raise max_chunk_size"
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
