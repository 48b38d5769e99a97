"""HFTextTokenizer: plain-text encoding and reading a model directory.

Which pieces are special and which ID is BOS is checked against exllamav2 itself in
test_exllamav2_equivalence.py; these tests cover the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.tiny_model_dirs import edit_json, write_tiny_model_dir
from worker.encoding.text_tokenizer import HFTextTokenizer, TextTokenizer


def test_encode_texts_is_plain_encoding_of_each_text(tiny_tokenizer: HFTextTokenizer) -> None:
    texts = ["Hello there", "", "[INST] <|im_start|> <s>", "你好 🐱", " the"]
    one_by_one = [tiny_tokenizer.backend.encode(t, add_special_tokens=False).ids for t in texts]
    assert tiny_tokenizer.encode_texts(texts) == one_by_one
    assert tiny_tokenizer.encode_texts([]) == []


def test_decode_writes_special_tokens_out(tiny_tokenizer: HFTextTokenizer) -> None:
    piece, token_id = next(iter(tiny_tokenizer.special_pieces.items()))
    assert tiny_tokenizer.decode([token_id]) == piece


def test_special_pieces_cannot_be_changed(tiny_tokenizer: HFTextTokenizer) -> None:
    with pytest.raises(TypeError):
        tiny_tokenizer.special_pieces["<new>"] = 5  # type: ignore[index]


def test_is_a_text_tokenizer(tiny_tokenizer: HFTextTokenizer) -> None:
    seam: TextTokenizer = tiny_tokenizer
    assert seam.encode_texts(["a"]) == tiny_tokenizer.encode_texts(["a"])


def test_plain_added_tokens_are_not_special(tmp_path: Path) -> None:
    tokenizer = HFTextTokenizer.from_model_dir(write_tiny_model_dir(tmp_path, "qwen2-vl"))
    assert "<|image_pad|>" in tokenizer.special_pieces
    assert "<tool_call>" not in tokenizer.special_pieces
    # The tokenizer library still keeps a plain added token whole.
    [ids] = tokenizer.encode_texts(["<tool_call>"])
    assert ids == [tokenizer.backend.token_to_id("<tool_call>")]


def test_a_directory_without_tokenizer_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        HFTextTokenizer.from_model_dir(tmp_path)


@pytest.mark.parametrize(
    ("key", "value"), [("bos_token_id", "1"), ("bos_token_id", 1.5), ("eos_token_id", {"id": 2})]
)
def test_malformed_token_ids_in_config_are_refused(tmp_path: Path, key: str, value: object) -> None:
    directory = write_tiny_model_dir(tmp_path, "pixtral")
    edit_json(directory / "config.json", lambda config: config | {key: value})
    with pytest.raises(ValueError, match=key):
        HFTextTokenizer.from_model_dir(directory)


def test_config_json_bos_wins_over_tokenizer_config(tmp_path: Path) -> None:
    directory = write_tiny_model_dir(tmp_path, "qwen2-vl")
    config = json.loads((directory / "config.json").read_text())
    assert HFTextTokenizer.from_model_dir(directory).bos_token_id == config["bos_token_id"]
    (directory / "config.json").unlink()
    assert HFTextTokenizer.from_model_dir(directory).bos_token_id is None
