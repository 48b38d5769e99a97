"""Tiny tokenizer model directories for both families, and small edits to their files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.tiny.tokenizer import TinyTokenizerFamily, write_tiny_tokenizer

FAMILIES: tuple[TinyTokenizerFamily, ...] = ("pixtral", "qwen2-vl")


def write_tiny_model_dir(
    directory: Path, family: TinyTokenizerFamily, *, with_config: bool = True
) -> Path:
    """A tiny tokenizer plus, optionally, a config.json with the real repo's token-ID entries."""
    write_tiny_tokenizer(directory, family)
    if with_config:
        write_json(directory / "config.json", _config_like_real_repo(directory, family))
    return directory


def _config_like_real_repo(directory: Path, family: TinyTokenizerFamily) -> dict[str, Any]:
    tokenizer = HFTextTokenizer.from_model_dir(directory).backend
    vocab_size = tokenizer.get_vocab_size()
    if family == "pixtral":
        # Llava keeps BOS/EOS inside text_config, where exllamav2 does not look for them.
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "image_token_index": tokenizer.token_to_id("[IMG]"),
            "text_config": {
                "model_type": "mistral",
                "bos_token_id": 1,
                "eos_token_id": 2,
                "vocab_size": vocab_size,
            },
        }
    # Qwen2-VL names <|endoftext|> as BOS here although tokenizer_config.json has none.
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "bos_token_id": tokenizer.token_to_id("<|endoftext|>"),
        "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
        "vision_start_token_id": tokenizer.token_to_id("<|vision_start|>"),
        "image_token_id": tokenizer.token_to_id("<|image_pad|>"),
        "vocab_size": vocab_size,
    }


def write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")


def edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    """Replace the JSON in `path` with `edit(content)`."""
    write_json(path, edit(json.loads(path.read_text(encoding="utf-8"))))
