"""config.json and generation_config.json of the tiny VLMs, laid out as the real repos'.

Pixtral follows mistral-community/pixtral-12b (Llava with a Pixtral vision tower and a Mistral
text model); Qwen2-VL follows Qwen/Qwen2-VL-2B-Instruct (a flat config.json with a nested
vision_config). The layouts matter more than the numbers: exllamav2 0.3.2 reads these files by
key, and only in the older layouts the real repos use (`rope_scaling` with `mrope_section`,
`rope_theta`), which transformers still reads as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.tiny.preprocessor_configs import (
    PIXTRAL_LONGEST_EDGE,
    PIXTRAL_PATCH_SIZE,
    QWEN2_VL_MERGE_SIZE,
    QWEN2_VL_PATCH_SIZE,
    QWEN2_VL_TEMPORAL_PATCH_SIZE,
)
from worker.tiny.tokenizer import TinyTokenizerFamily


@dataclass(frozen=True, slots=True)
class TinyModelShape:
    """The dimensions of a tiny VLM; widths are multiples of 128 for exllamav2's kernels."""

    vocab_size: int  # embedding rows: the tokenizer's vocabulary padded to a multiple of 64
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # fewer than num_heads, so grouped-query attention is exercised
    head_dim: int
    vision_hidden_size: int  # unlike hidden_size, so mixing up the two widths fails loudly
    # Pixtral: exllamav2 sizes the projector's inner width from it, and the projector's inner
    # width is the text hidden size, so the two must be equal. Qwen2-VL: embed_dim * mlp_ratio.
    vision_intermediate_size: int
    vision_num_layers: int
    vision_num_heads: int

    @property
    def vision_head_dim(self) -> int:
        return self.vision_hidden_size // self.vision_num_heads


def tiny_model_shape(family: TinyTokenizerFamily, tokenizer_vocab_size: int) -> TinyModelShape:
    hidden_size = 256
    vision_hidden_size = 128
    return TinyModelShape(
        vocab_size=-(-tokenizer_vocab_size // 64) * 64,
        hidden_size=hidden_size,
        intermediate_size=512,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        vision_hidden_size=vision_hidden_size,
        vision_intermediate_size=hidden_size if family == "pixtral" else 4 * vision_hidden_size,
        vision_num_layers=2,
        vision_num_heads=2,
    )


@dataclass(frozen=True, slots=True)
class SpecialTokenIds:
    """The IDs config.json names, taken from the tokenizer that ships beside it."""

    bos: int
    eos: int
    image: int  # [IMG] / <|image_pad|>: the placeholder the processor expands per image
    # Qwen2-VL only; Pixtral's config names no other token ([IMG_BREAK] and [IMG_END] are
    # found by the processor and by exllamav2 in the tokenizer).
    vision_start: int | None
    vision_end: int | None
    vision_pad: int | None
    video: int | None


def model_config(
    family: TinyTokenizerFamily, shape: TinyModelShape, ids: SpecialTokenIds
) -> dict[str, Any]:
    """config.json."""
    if family == "pixtral":
        return _pixtral_config(shape, ids)
    return _qwen2_vl_config(shape, ids)


def _pixtral_config(shape: TinyModelShape, ids: SpecialTokenIds) -> dict[str, Any]:
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_seq_length": 1,
        "image_token_index": ids.image,
        "model_type": "llava",
        "multimodal_projector_bias": True,
        "projector_hidden_act": "gelu",
        # Pixtral-12B keeps BOS/EOS in text_config only; exllamav2 then takes them from the
        # tokenizer files, which name the same IDs.
        "text_config": {
            "bos_token_id": ids.bos,
            "eos_token_id": ids.eos,
            "head_dim": shape.head_dim,
            "hidden_act": "silu",
            "hidden_size": shape.hidden_size,
            "intermediate_size": shape.intermediate_size,
            # exllamav2 sizes its RoPE tables by this; the real 1,024,000 would waste memory.
            "max_position_embeddings": 8192,
            "model_type": "mistral",
            "num_attention_heads": shape.num_heads,
            "num_hidden_layers": shape.num_layers,
            "num_key_value_heads": shape.num_kv_heads,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "vocab_size": shape.vocab_size,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "vision_config": {
            "head_dim": shape.vision_head_dim,
            "hidden_act": "silu",
            "hidden_size": shape.vision_hidden_size,
            "image_size": PIXTRAL_LONGEST_EDGE,
            "intermediate_size": shape.vision_intermediate_size,
            "model_type": "pixtral",
            "num_attention_heads": shape.vision_num_heads,
            "num_channels": 3,
            "num_hidden_layers": shape.vision_num_layers,
            "patch_size": PIXTRAL_PATCH_SIZE,
            "rope_theta": 10000.0,
        },
        # Pixtral-12B projects the last layer's output, every patch ("full").
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    }


def _qwen2_vl_config(shape: TinyModelShape, ids: SpecialTokenIds) -> dict[str, Any]:
    # M-RoPE splits each head's rotary half into temporal, height and width sections; the real
    # [16, 24, 24] is for head_dim 128, so halve it for head_dim 64.
    rotary_half = shape.head_dim // 2
    mrope_section = [rotary_half // 4, rotary_half * 3 // 8, rotary_half * 3 // 8]
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "image_token_id": ids.image,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": 8192,
        "max_window_layers": shape.num_layers,
        "model_type": "qwen2_vl",
        "num_attention_heads": shape.num_heads,
        "num_hidden_layers": shape.num_layers,
        "num_key_value_heads": shape.num_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_section": mrope_section, "type": "mrope"},
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "use_cache": True,
        # No sliding_window key: exllamav2 would read one even with use_sliding_window false.
        "use_sliding_window": False,
        "video_token_id": ids.video,
        "vision_config": {
            "depth": shape.vision_num_layers,
            "embed_dim": shape.vision_hidden_size,
            "hidden_act": "quick_gelu",
            "hidden_size": shape.hidden_size,  # the merger's output width: the text hidden size
            "in_chans": 3,
            "mlp_ratio": shape.vision_intermediate_size // shape.vision_hidden_size,
            "num_heads": shape.vision_num_heads,
            "patch_size": QWEN2_VL_PATCH_SIZE,
            "spatial_merge_size": QWEN2_VL_MERGE_SIZE,
            "spatial_patch_size": QWEN2_VL_PATCH_SIZE,
            "temporal_patch_size": QWEN2_VL_TEMPORAL_PATCH_SIZE,
        },
        "vision_end_token_id": ids.vision_end,
        "vision_start_token_id": ids.vision_start,
        "vision_token_id": ids.vision_pad,
        "vocab_size": shape.vocab_size,
    }


def generation_config(family: TinyTokenizerFamily, ids: SpecialTokenIds) -> dict[str, Any]:
    """generation_config.json; exllamav2 takes its stop tokens from here."""
    if family == "pixtral":
        return {"bos_token_id": ids.bos, "eos_token_id": ids.eos}
    # Qwen2-VL stops at <|im_end|> and at <|endoftext|>, which also pads.
    return {"bos_token_id": ids.bos, "eos_token_id": [ids.eos, ids.bos], "pad_token_id": ids.bos}
