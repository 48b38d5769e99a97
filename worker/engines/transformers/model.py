"""A Hugging Face VLM directory loaded with transformers, on the CPU (the test and demo engine).

transformers is imported here and in the modules that use this one, and only lazily from the
rest of vlmq (the engine seam hides it).
"""

from __future__ import annotations

import inspect
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
    cache_keyword: str  # how this transformers release's forward takes the KV cache (`forward`)

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

    def new_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Any:
        """A `DynamicCache`, empty or holding (keys, values) per layer: [batch, kv_heads, length,
        head_dim] each. Both 5.17 and later releases take `ddp_cache_data` so."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=layers) if layers is not None else DynamicCache()

    def forward(self, cache: Any, **inputs: Any) -> Any:
        """One forward pass that reads and extends `cache` (a `DynamicCache`) in place.

        The keyword was renamed: transformers 5.17 (the GPU machine's) takes `past_key_values`,
        later releases take `cache` (and only warn about the old name until they drop it), and
        the output's field was renamed with it. So the keyword is read from the model's
        signature, and callers read the cache they passed in, which the model extends in place,
        never the output's field. `scripts/check-transformers-versions` runs both. A release
        that takes the cache under yet another name would swallow it in `**kwargs` and run
        without it, so the cache is checked to have grown by the tokens fed.
        """
        before = cache.get_seq_length()
        output = self.model(**inputs, **{self.cache_keyword: cache}, use_cache=True)
        fed = inputs["inputs_embeds"].shape[1]
        if cache.get_seq_length() != before + fed:
            raise RuntimeError(
                f"transformers did not extend the KV cache passed as {self.cache_keyword!r} "
                f"({before} tokens, then {cache.get_seq_length()}, after {fed} fed)"
            )
        return output


def _cache_keyword(model: Any) -> str:
    # inspect.signature follows the deprecation decorators' __wrapped__ to the real parameters.
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def load_transformers_vlm(model_dir: Path | str, max_context: int | None = None) -> TransformersVlm:
    from transformers import AutoModelForImageTextToText

    # From its module: transformers 5.17's top-level name is a placeholder that demands
    # torchvision when it is missing, though the PIL processors need none.
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    directory = Path(model_dir)
    config = json.loads((directory / "config.json").read_text())
    family = detect_family(config)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    # The PIL backend, whether or not torchvision is installed (the GPU machine may have it):
    # the pixels this engine's tests were checked with on machines that have none.
    image_processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
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
        cache_keyword=_cache_keyword(model),
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
