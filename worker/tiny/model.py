"""Tiny, seeded, random-weight VLMs of real architectures, written in Hugging Face format.

Tests, the demo and the GPU check need a real model without downloading one. These are the real
architectures (Pixtral in Llava, Qwen2-VL) at two to three million parameters: transformers runs
them on a CPU in milliseconds, and exllamav2 reads the same directory, so both engines can be
compared on the same weights. The same family and seed always give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

from safetensors.torch import save_file
from tokenizers import Tokenizer

from worker.tiny.chat_templates import chat_template
from worker.tiny.model_configs import (
    SpecialTokenIds,
    generation_config,
    model_config,
    tiny_model_shape,
)
from worker.tiny.model_weights import tiny_model_tensors
from worker.tiny.preprocessor_configs import preprocessor_config, processor_config
from worker.tiny.tokenizer import TinyTokenizerFamily, write_tiny_tokenizer

TinyModelFamily = TinyTokenizerFamily
TINY_MODEL_FAMILIES: tuple[TinyModelFamily, ...] = get_args(TinyTokenizerFamily)
MAX_SEED = 2**63  # torch generators take seeds below 2**64; one bound for every caller

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_COMMON_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "chat_template.json",
    "model.safetensors",
)


def tiny_model_file_names(family: TinyModelFamily) -> tuple[str, ...]:
    """The files `write_tiny_model` writes for `family`, in the order it writes them."""
    extra = ("processor_config.json",) if family == "pixtral" else ()
    return _TOKENIZER_FILES + _COMMON_FILES + extra


def write_tiny_model(directory: Path, family: TinyModelFamily, seed: int = 0) -> None:
    """Write a tiny `family` VLM with weights drawn from `seed` into `directory`.

    Files of another family's tiny model are removed, so the directory holds one model.
    """
    if family not in TINY_MODEL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {TINY_MODEL_FAMILIES}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    directory.mkdir(parents=True, exist_ok=True)
    for name in _all_file_names() - set(tiny_model_file_names(family)):
        (directory / name).unlink(missing_ok=True)

    write_tiny_tokenizer(directory, family)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids = _special_token_ids(family, tokenizer)
    shape = tiny_model_shape(family, tokenizer.get_vocab_size())

    _write_json(directory / "config.json", model_config(family, shape, ids))
    _write_json(directory / "generation_config.json", generation_config(family, ids))
    _write_json(directory / "preprocessor_config.json", preprocessor_config(family))
    _write_json(directory / "chat_template.json", {"chat_template": chat_template(family)})
    processor = processor_config(family)
    if processor is not None:
        _write_json(directory / "processor_config.json", processor)
    # The "format" entry is what transformers checks to accept a PyTorch safetensors file.
    save_file(
        tiny_model_tensors(family, shape, seed),
        directory / "model.safetensors",
        metadata={"format": "pt"},
    )


def _special_token_ids(family: TinyModelFamily, tokenizer: Tokenizer) -> SpecialTokenIds:
    def id_of(piece: str) -> int:
        token_id = tokenizer.token_to_id(piece)
        if token_id is None:
            raise ValueError(f"the tiny {family} tokenizer lacks {piece!r}")
        return int(token_id)

    if family == "pixtral":
        return SpecialTokenIds(
            bos=id_of("<s>"),
            eos=id_of("</s>"),
            image=id_of("[IMG]"),
            vision_start=None,
            vision_end=None,
            vision_pad=None,
            video=None,
        )
    # Qwen2-VL's config.json names <|endoftext|> as BOS although its tokenizer adds none.
    return SpecialTokenIds(
        bos=id_of("<|endoftext|>"),
        eos=id_of("<|im_end|>"),
        image=id_of("<|image_pad|>"),
        vision_start=id_of("<|vision_start|>"),
        vision_end=id_of("<|vision_end|>"),
        vision_pad=id_of("<|vision_pad|>"),
        video=id_of("<|video_pad|>"),
    )


def _all_file_names() -> set[str]:
    return {name for family in TINY_MODEL_FAMILIES for name in tiny_model_file_names(family)}


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
