"""HFTextTokenizer: plain-text encoding and reading a model directory.

Which pieces are special and which ID is BOS is checked against exllamav2 itself in
test_exllamav2_equivalence.py; these tests cover the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from tests.support.tiny_model_dirs import FAMILIES, edit_json, write_tiny_model_dir
from worker.encoding.prompt_encoder import PromptEncoder
from worker.encoding.text_tokenizer import HFTextTokenizer, TextTokenizer
from worker.span import Span
from worker.tiny.tokenizer import TinyTokenizerFamily


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


def _bos_template(model_dir: Path) -> None:
    """tokenizer.json's post-processor opens every text with the model's BOS, as Llama's does."""
    bos = HFTextTokenizer.from_model_dir(model_dir).bos_token_id
    assert bos is not None
    piece = HFTextTokenizer.from_model_dir(model_dir).backend.id_to_token(bos)
    bos_then = [{"SpecialToken": {"id": piece, "type_id": 0}}]
    template = {
        "type": "TemplateProcessing",
        "single": [*bos_then, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [*bos_then, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {piece: {"id": piece, "ids": [bos], "tokens": [piece]}},
    }
    edit_json(model_dir / "tokenizer.json", lambda tok: tok | {"post_processor": template})


def _add_bos_token_flag(model_dir: Path) -> None:
    # transformers 5 leaves a ByteLevel post-processor as it is, whatever this flag says.
    edit_json(model_dir / "tokenizer_config.json", lambda config: config | {"add_bos_token": True})


BOS_VARIANTS = {"like-real-repo": lambda _: None, "bos-template": _bos_template,
                "add-bos-token-flag": _add_bos_token_flag}

HF_TEXTS = [
    "Hello there",
    "<|im_start|>user\nDescribe it.<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST]Describe it.[/INST]",
    "",
]


@pytest.mark.parametrize("variant", BOS_VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_bos_is_left_to_what_transformers_tokenizer_does(
    tmp_path: Path, family: TinyTokenizerFamily, variant: str
) -> None:
    # The reference is transformers' own tokenizer for the directory: Qwen2-VL's adds no BOS,
    # though its config.json names <|endoftext|> as BOS (which exllamav2 adds when asked).
    from transformers import AutoTokenizer

    directory = write_tiny_model_dir(tmp_path, family)
    BOS_VARIANTS[variant](directory)
    hf = AutoTokenizer.from_pretrained(directory)
    ours = HFTextTokenizer.from_model_dir(directory)
    encoder = PromptEncoder(ours)
    for text in HF_TEXTS:
        assert encoder.encode(text, []) == hf(text).input_ids, text
    assert ours.adds_bos == (variant == "bos-template")


def _pad_and_truncate(model_dir: Path) -> None:
    padding = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
               "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}
    truncation = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    edit_json(model_dir / "tokenizer.json",
              lambda tokenizer: tokenizer | {"padding": padding, "truncation": truncation})


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_and_truncation_in_the_file_are_ignored(
    tmp_path: Path, family: TinyTokenizerFamily
) -> None:
    plain = HFTextTokenizer.from_model_dir(write_tiny_model_dir(tmp_path / "plain", family))
    directory = write_tiny_model_dir(tmp_path / "padded", family)
    _pad_and_truncate(directory)
    # The file really pads and truncates when loaded as it is.
    as_written = Tokenizer.from_file(str(directory / "tokenizer.json"))
    long_text, short_text = "A much longer piece of text than the other", "Hi"
    padded = as_written.encode_batch([long_text, short_text], add_special_tokens=False)
    assert len(padded[1].ids) == len(padded[0].ids) == 3
    ours = HFTextTokenizer.from_model_dir(directory)
    texts = [long_text, short_text, "[INST] mid <|im_start|> size"]
    assert ours.encode_texts(texts) == plain.encode_texts(texts)
    encoder, reference = PromptEncoder(ours), PromptEncoder(plain)
    items: list[tuple[str, list[Span]]] = [(text, []) for text in texts]
    assert encoder.encode_many(items) == [reference.encode(text, []) for text in texts]


def test_a_backend_that_pads_is_refused(tiny_tokenizer: HFTextTokenizer) -> None:
    backend = Tokenizer.from_str(tiny_tokenizer.backend.to_str())
    backend.enable_padding()
    with pytest.raises(ValueError, match="pads or truncates"):
        HFTextTokenizer(backend, tiny_tokenizer.bos_token_id, tiny_tokenizer.special_pieces)
