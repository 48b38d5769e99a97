"""Seeded random weights for the tiny VLMs, named as the real checkpoints name them.

The names follow the files of mistral-community/pixtral-12b and Qwen/Qwen2-VL-2B-Instruct
(`language_model.model.layers.0...`, `visual.blocks.0...`), not transformers' in-memory layout:
exllamav2 reads only those names, and transformers renames them as it loads.

Weights are drawn in a fixed order from one generator, independent of any library's own
initialisation, so a seed gives the same bytes on every machine and library version.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from worker.tiny.model_configs import TinyModelShape
from worker.tiny.preprocessor_configs import (
    PIXTRAL_PATCH_SIZE,
    QWEN2_VL_MERGE_SIZE,
    QWEN2_VL_PATCH_SIZE,
    QWEN2_VL_TEMPORAL_PATCH_SIZE,
)
from worker.tiny.tokenizer import TinyTokenizerFamily

# Linear and embedding weights, as HF's `_init_weights`: logits then spread by a few tenths.
_WEIGHT_STD = 0.02


class Init(Enum):
    WEIGHT = "weight"  # normal(0, 0.02)
    # Biases and norm scales are random too (HF starts them at 0 and 1), so a loader that drops
    # or swaps one changes the logits instead of going unnoticed.
    BIAS = "bias"  # normal(0, 0.02)
    SCALE = "scale"  # 1 + normal(0, 0.02)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    init: Init


def tiny_model_tensors(
    family: TinyTokenizerFamily, shape: TinyModelShape, seed: int
) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, float16, drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for spec in tensor_specs(family, shape):
        values = torch.randn(spec.shape, generator=generator, dtype=torch.float32) * _WEIGHT_STD
        if spec.init is Init.SCALE:
            values += 1.0
        tensors[spec.name] = values.to(torch.float16)
    return tensors


def tensor_specs(family: TinyTokenizerFamily, shape: TinyModelShape) -> list[TensorSpec]:
    if family == "pixtral":
        return _pixtral_vision(shape) + _text_model("language_model.", shape, qkv_bias=False)
    return _qwen2_vl_vision(shape) + _text_model("", shape, qkv_bias=True)


def _text_model(prefix: str, shape: TinyModelShape, *, qkv_bias: bool) -> list[TensorSpec]:
    hidden, inner = shape.hidden_size, shape.intermediate_size
    q_width = shape.num_heads * shape.head_dim
    kv_width = shape.num_kv_heads * shape.head_dim
    specs = [_weight(f"{prefix}model.embed_tokens.weight", shape.vocab_size, hidden)]
    for index in range(shape.num_layers):
        layer = f"{prefix}model.layers.{index}"
        specs.append(_scale(f"{layer}.input_layernorm.weight", hidden))
        specs += _linear(f"{layer}.self_attn.q_proj", q_width, hidden, bias=qkv_bias)
        specs += _linear(f"{layer}.self_attn.k_proj", kv_width, hidden, bias=qkv_bias)
        specs += _linear(f"{layer}.self_attn.v_proj", kv_width, hidden, bias=qkv_bias)
        specs += _linear(f"{layer}.self_attn.o_proj", hidden, q_width, bias=False)
        specs.append(_scale(f"{layer}.post_attention_layernorm.weight", hidden))
        specs += _linear(f"{layer}.mlp.gate_proj", inner, hidden, bias=False)
        specs += _linear(f"{layer}.mlp.up_proj", inner, hidden, bias=False)
        specs += _linear(f"{layer}.mlp.down_proj", hidden, inner, bias=False)
    specs.append(_scale(f"{prefix}model.norm.weight", hidden))
    specs.append(_weight(f"{prefix}lm_head.weight", shape.vocab_size, hidden))
    return specs


def _pixtral_vision(shape: TinyModelShape) -> list[TensorSpec]:
    width, inner = shape.vision_hidden_size, shape.vision_intermediate_size
    patch = PIXTRAL_PATCH_SIZE
    specs = [
        _weight("vision_tower.patch_conv.weight", width, 3, patch, patch),
        _scale("vision_tower.ln_pre.weight", width),
    ]
    for index in range(shape.vision_num_layers):
        layer = f"vision_tower.transformer.layers.{index}"
        specs.append(_scale(f"{layer}.attention_norm.weight", width))
        for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
            specs += _linear(f"{layer}.attention.{projection}", width, width, bias=False)
        specs.append(_scale(f"{layer}.ffn_norm.weight", width))
        specs += _linear(f"{layer}.feed_forward.gate_proj", inner, width, bias=False)
        specs += _linear(f"{layer}.feed_forward.up_proj", inner, width, bias=False)
        specs += _linear(f"{layer}.feed_forward.down_proj", width, inner, bias=False)
    hidden = shape.hidden_size
    specs += _linear("multi_modal_projector.linear_1", hidden, width, bias=True)
    specs += _linear("multi_modal_projector.linear_2", hidden, hidden, bias=True)
    return specs


def _qwen2_vl_vision(shape: TinyModelShape) -> list[TensorSpec]:
    width, inner = shape.vision_hidden_size, shape.vision_intermediate_size
    patch = QWEN2_VL_PATCH_SIZE
    # A 3D convolution: two video frames per patch; an image is repeated to fill both.
    conv_shape = (width, 3, QWEN2_VL_TEMPORAL_PATCH_SIZE, patch, patch)
    specs = [_weight("visual.patch_embed.proj.weight", *conv_shape)]
    for index in range(shape.vision_num_layers):
        block = f"visual.blocks.{index}"
        specs += _layer_norm(f"{block}.norm1", width)
        specs += _linear(f"{block}.attn.qkv", 3 * width, width, bias=True)
        specs += _linear(f"{block}.attn.proj", width, width, bias=True)
        specs += _layer_norm(f"{block}.norm2", width)
        specs += _linear(f"{block}.mlp.fc1", inner, width, bias=True)
        specs += _linear(f"{block}.mlp.fc2", width, inner, bias=True)
    # The merger concatenates each 2 x 2 group of patches before projecting to the text width.
    merged = width * QWEN2_VL_MERGE_SIZE**2
    specs += _layer_norm("visual.merger.ln_q", width)
    specs += _linear("visual.merger.mlp.0", merged, merged, bias=True)
    specs += _linear("visual.merger.mlp.2", shape.hidden_size, merged, bias=True)
    return specs


def _linear(name: str, out_features: int, in_features: int, *, bias: bool) -> list[TensorSpec]:
    specs = [_weight(f"{name}.weight", out_features, in_features)]
    if bias:
        specs.append(TensorSpec(f"{name}.bias", (out_features,), Init.BIAS))
    return specs


def _layer_norm(name: str, width: int) -> list[TensorSpec]:
    return [_scale(f"{name}.weight", width), TensorSpec(f"{name}.bias", (width,), Init.BIAS)]


def _weight(name: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, shape, Init.WEIGHT)


def _scale(name: str, width: int) -> TensorSpec:
    return TensorSpec(name, (width,), Init.SCALE)
