"""The tiny tokenizers: reproducible, byte-level, and laid out like each family's real repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from tests.support.tiny_model_dirs import FAMILIES
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.tiny.tokenizer import TinyTokenizerFamily, write_tiny_tokenizer

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _read_all(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_run_writes_the_same_bytes(tmp_path: Path, family: TinyTokenizerFamily) -> None:
    write_tiny_tokenizer(tmp_path / "first", family)
    write_tiny_tokenizer(tmp_path / "second", family)
    # Another process, with other hash seeds in Python and in the tokenizers library.
    script = (
        "import sys; from pathlib import Path; from worker.tiny.tokenizer import "
        "write_tiny_tokenizer; write_tiny_tokenizer(Path(sys.argv[1]), sys.argv[2])"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "third"), family],
        check=True,
        env=os.environ | {"PYTHONHASHSEED": "12345"},
    )
    first = _read_all(tmp_path / "first")
    assert _read_all(tmp_path / "second") == first
    assert _read_all(tmp_path / "third") == first


def test_vocabulary_is_small_but_learned(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert 600 <= tokenizer.get_vocab_size() <= 1000
    # Learned merges, not bytes alone: common words are one token.
    assert len(tokenizer.encode(" the", add_special_tokens=False).ids) == 1


def test_pixtral_keeps_the_real_control_token_ids(tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path, "pixtral")
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    expected = {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4}
    expected |= {"[IMG]": 10, "<pad>": 11, "[IMG_BREAK]": 12, "[IMG_END]": 13}
    assert {piece: tokenizer.token_to_id(piece) for piece in expected} == expected
    assert all(token.special for token in tokenizer.get_added_tokens_decoder().values())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == (
        "<s>",
        "</s>",
        "<unk>",
    )
    assert HFTextTokenizer.from_model_dir(tmp_path).bos_token_id == 1


def test_qwen2_vl_has_no_bos_and_a_plain_added_token(tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path, "qwen2-vl")
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    added = {
        token.content: (i, token.special)
        for i, token in tokenizer.get_added_tokens_decoder().items()
    }
    learned = tokenizer.get_vocab_size(with_added_tokens=False)
    # The specials follow the learned vocabulary, in the real order.
    assert added["<|endoftext|>"] == (learned, True)
    assert added["<|im_start|>"] == (learned + 1, True)
    assert added["<|im_end|>"] == (learned + 2, True)
    assert added["<|image_pad|>"][1] and added["<|vision_start|>"][1]
    assert added["<tool_call>"][1] is False
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["bos_token"] is None
    assert config["eos_token"] == "<|im_end|>"
    assert config["added_tokens_decoder"][str(added["<tool_call>"][0])]["special"] is False
    assert HFTextTokenizer.from_model_dir(tmp_path).bos_token_id is None


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_any_unicode_text_survives_a_round_trip(tiny_tokenizer: HFTextTokenizer, text: str) -> None:
    [ids] = tiny_tokenizer.encode_texts([text])
    assert tiny_tokenizer.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    ["Café 你好 🐱 👩‍💻 🇯🇵 Ærø", "  leading and trailing  ", "\n\t\r\n", "[INST]<tool_call>"],
)
def test_chosen_text_survives_a_round_trip(tiny_tokenizer: HFTextTokenizer, text: str) -> None:
    [ids] = tiny_tokenizer.encode_texts([text])
    assert tiny_tokenizer.decode(ids) == text


def test_transformers_reads_the_files_alike(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ours = HFTextTokenizer.from_model_dir(tiny_model_dir)
    text = "Describe <|im_start|> [INST] the photo: Café 你好 🐱"
    assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode_texts([text])[0]
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == (
        config["bos_token"],
        config["eos_token"],
        config["pad_token"],
    )
