"""A model's fingerprint follows exactly the files that decide its embeddings and outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.engines.model_fingerprint import model_fingerprint
from worker.tiny.model import write_tiny_model


@pytest.fixture(scope="session")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fingerprint") / "pixtral"
    write_tiny_model(directory, "pixtral")
    return directory


@pytest.fixture
def model_copy(written: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(written, tmp_path / "copy"))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_same_files_same_fingerprint_wherever_they_are(written: Path, tmp_path: Path) -> None:
    fingerprint = model_fingerprint(written)
    assert len(fingerprint) == 64
    assert int(fingerprint, 16) >= 0
    write_tiny_model(tmp_path / "elsewhere", "pixtral")
    assert model_fingerprint(tmp_path / "elsewhere") == fingerprint


def test_other_seed_or_family_other_fingerprint(written: Path, tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "seed1", "pixtral", seed=1)
    write_tiny_model(tmp_path / "qwen", "qwen2-vl")
    fingerprints = {
        model_fingerprint(written),
        model_fingerprint(tmp_path / "seed1"),
        model_fingerprint(tmp_path / "qwen"),
    }
    assert len(fingerprints) == 3


@pytest.mark.parametrize(
    "name",
    [
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ],
)
def test_one_changed_byte_changes_it(written: Path, model_copy: Path, name: str) -> None:
    _flip_last_byte(model_copy / name)
    assert model_fingerprint(model_copy) != model_fingerprint(written)


def test_adding_a_read_file_or_another_shard_changes_it(written: Path, model_copy: Path) -> None:
    # exllamav2 takes every entry of added_tokens.json as a special token.
    (model_copy / "added_tokens.json").write_text('{"<extra>": 900}')
    with_added = model_fingerprint(model_copy)
    assert with_added != model_fingerprint(written)
    shutil.copy(model_copy / "model.safetensors", model_copy / "model-extra.safetensors")
    assert model_fingerprint(model_copy) not in {with_added, model_fingerprint(written)}


def test_files_that_change_no_output_are_left_out(written: Path, model_copy: Path) -> None:
    # The engines encode prompts as given; the chat template only helps clients write them.
    _flip_last_byte(model_copy / "chat_template.json")
    (model_copy / "README.md").write_text("# a tiny model")
    (model_copy / "weights").mkdir()
    (model_copy / "weights" / "old.safetensors").write_bytes(b"nested, never loaded")
    assert model_fingerprint(model_copy) == model_fingerprint(written)


def test_a_directory_without_config_or_weights_is_refused(model_copy: Path) -> None:
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        model_fingerprint(model_copy)
    (model_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        model_fingerprint(model_copy)
