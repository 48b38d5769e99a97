"""The tiny VLMs: reproducible bytes, loadable by transformers and by exllamav2's config and
tokenizer, with a real forward pass through each family's image processor.

The forward pass here uses the family's PIL image processor and tokenizer and expands each
image placeholder as the family's processor documents it. One test checks that expansion, token
for token, and the pixel values against the processor itself: AutoProcessor where torchvision is
installed; without it (the CPU set-up), which AutoProcessor needs for both families in
transformers 5.24, the same PixtralProcessor / Qwen2VLProcessor classes built from the model
directory's files (tests/support/hf_processors.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from tokenizers import Tokenizer

from tests.support.exllamav2_cpu import ExLlamaV2Config, ExLlamaV2Tokenizer
from tests.support.hf_processors import hf_processor
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.tiny.model import (
    TINY_MODEL_FAMILIES,
    TinyModelFamily,
    tiny_model_file_names,
    write_tiny_model,
)

_PLACEHOLDER = {"pixtral": "[IMG]", "qwen2-vl": "<|image_pad|>"}


@pytest.fixture(scope="session", params=TINY_MODEL_FAMILIES)
def family(request: pytest.FixtureRequest) -> TinyModelFamily:
    family: TinyModelFamily = request.param
    return family


@pytest.fixture(scope="session")
def model_dir(family: TinyModelFamily, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(f"tiny-{family}")
    write_tiny_model(directory, family)
    return directory


@pytest.fixture(scope="session")
def hf_model(family: TinyModelFamily, model_dir: Path) -> Any:
    model = _model_class(family).from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model


def _model_class(family: TinyModelFamily) -> Any:
    from transformers import LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

    if family == "pixtral":
        return LlavaForConditionalGeneration
    return Qwen2VLForConditionalGeneration


def _config(model_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    return config


def _text_config(model_dir: Path) -> dict[str, Any]:
    config = _config(model_dir)
    text_config: dict[str, Any] = config.get("text_config", config)
    return text_config


def _read_all(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# Files and bytes


def test_writes_exactly_the_listed_files(family: TinyModelFamily, model_dir: Path) -> None:
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(tiny_model_file_names(family))


def test_same_seed_same_bytes_other_seed_other_weights(
    family: TinyModelFamily, model_dir: Path, tmp_path: Path
) -> None:
    write_tiny_model(tmp_path / "again", family)
    write_tiny_model(tmp_path / "seed1", family, seed=1)
    assert _read_all(tmp_path / "again") == _read_all(model_dir)
    other = _read_all(tmp_path / "seed1")
    differing = {name for name, data in _read_all(model_dir).items() if other[name] != data}
    assert differing == {"model.safetensors"}


def test_writing_another_family_replaces_the_model(tmp_path: Path) -> None:
    write_tiny_model(tmp_path, "pixtral")
    (tmp_path / "notes.txt").write_text("kept")
    write_tiny_model(tmp_path, "qwen2-vl")
    # Pixtral's processor_config.json would make transformers build the wrong processor.
    expected = {*tiny_model_file_names("qwen2-vl"), "notes.txt"}
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_unknown_family_or_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown family"):
        write_tiny_model(tmp_path, "llava")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        write_tiny_model(tmp_path, "pixtral", seed=-1)


def test_weights_are_float16_with_a_padded_vocabulary(model_dir: Path) -> None:
    text_config = _text_config(model_dir)
    vocab_size = text_config["vocab_size"]
    tokenizer_vocab = Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size()
    assert vocab_size % 64 == 0
    assert tokenizer_vocab <= vocab_size < tokenizer_vocab + 64
    # exllamav2's kernels want widths in multiples of 128.
    assert text_config["hidden_size"] % 128 == 0
    assert text_config["intermediate_size"] % 128 == 0
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
        assert {weights.get_slice(name).get_dtype() for name in names} == {"F16"}
        embed = next(name for name in names if name.endswith("embed_tokens.weight"))
        assert weights.get_slice(embed).get_shape() == [vocab_size, text_config["hidden_size"]]
        table = weights.get_tensor(embed).float()
    # Random and scaled like HF's init: neither constant nor huge.
    assert 0.015 < table.std().item() < 0.025


def test_config_names_the_tokenizers_ids(family: TinyModelFamily, model_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    config = _config(model_dir)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    if family == "pixtral":
        assert config["image_token_index"] == tokenizer.token_to_id("[IMG]")
        named = config["text_config"]
        assert (named["bos_token_id"], named["eos_token_id"]) == (
            tokenizer.token_to_id("<s>"),
            tokenizer.token_to_id("</s>"),
        )
        assert generation["eos_token_id"] == named["eos_token_id"]
        return
    expected = {
        "bos_token_id": "<|endoftext|>",
        "eos_token_id": "<|im_end|>",
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
        "vision_token_id": "<|vision_pad|>",
    }
    assert {key: config[key] for key in expected} == {
        key: tokenizer.token_to_id(piece) for key, piece in expected.items()
    }
    assert generation["eos_token_id"][0] == config["eos_token_id"]


# transformers


def test_transformers_loads_every_tensor_as_float32(
    family: TinyModelFamily, model_dir: Path
) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == {"pixtral": "llava", "qwen2-vl": "qwen2_vl"}[family]
    if family == "pixtral":
        assert config.vision_config.model_type == "pixtral"
        assert config.text_config.model_type == "mistral"
    else:
        # The old rope_scaling layout arrives as M-RoPE sections over half a head.
        text = config.text_config
        sections = text.rope_parameters["mrope_section"]
        assert sum(sections) == text.hidden_size // text.num_attention_heads // 2
    model, info = _model_class(family).from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        name = next(n for n in weights.keys() if n.endswith("embed_tokens.weight"))  # noqa: SIM118
        stored = weights.get_tensor(name).float()
    assert torch.equal(model.get_input_embeddings().weight.detach(), stored)


def _pattern_image(width: int, height: int, shift: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 5 + shift) % 256, (y * 7 + shift) % 256, ((x + y) * 3) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    return image


def _chat_prompt(model_dir: Path, num_images: int, question: str) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = json.loads((model_dir / "chat_template.json").read_text())["chat_template"]
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    messages: Any = [{"role": "user", "content": content}]  # typed stubs want text content
    prompt = tokenizer.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    assert isinstance(prompt, str)
    return prompt


def _model_inputs(
    family: TinyModelFamily, model_dir: Path, prompt: str, images: Sequence[Image.Image]
) -> dict[str, torch.Tensor]:
    """What the family's processor gives: pixels, and each placeholder expanded to its rows."""
    from transformers import AutoTokenizer

    # Not `transformers.AutoImageProcessor`: without torchvision, 5.17 exports a placeholder there.
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    pixels = dict(processor(images=list(images), return_tensors="pt"))
    placeholder = _PLACEHOLDER[family]
    pieces = prompt.split(placeholder)
    assert len(pieces) == len(images) + 1
    expanded = pieces[0]
    for index, piece in enumerate(pieces[1:]):
        expanded += _image_rows(family, pixels, index) + piece
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(expanded, add_special_tokens=False, return_tensors="pt")
    inputs = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], **pixels}
    if family == "qwen2-vl":
        # Marks image positions (1) among text (0), for M-RoPE's 3D positions.
        image_id = tokenizer.convert_tokens_to_ids(placeholder)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).long()
    return inputs


def _image_rows(family: TinyModelFamily, pixels: dict[str, torch.Tensor], index: int) -> str:
    if family == "pixtral":
        # A row of [IMG] per 16 pixels of width, each row closed by [IMG_BREAK], the last
        # one by [IMG_END] instead.
        height, width = (int(v) for v in pixels["image_sizes"][index])
        rows = ["[IMG]" * (width // 16) + "[IMG_BREAK]"] * (height // 16)
        return "".join(rows)[: -len("[IMG_BREAK]")] + "[IMG_END]"
    # One <|image_pad|> per 2 x 2 group of patches.
    grid_t, grid_h, grid_w = (int(v) for v in pixels["image_grid_thw"][index])
    return "<|image_pad|>" * (grid_t * grid_h * grid_w // 4)


def test_the_placeholder_expansion_is_the_family_processors(
    family: TinyModelFamily, model_dir: Path
) -> None:
    prompt = _chat_prompt(model_dir, 2, "What differs between these pictures?")
    images = [_pattern_image(70, 45, shift=0), _pattern_image(40, 90, shift=7)]
    ours = _model_inputs(family, model_dir, prompt, images)
    theirs = hf_processor(model_dir, family)(text=[prompt], images=images, return_tensors="pt")
    assert theirs["input_ids"].tolist() == ours["input_ids"].tolist()
    pixel_keys = {"pixtral": ("pixel_values", "image_sizes"),
                  "qwen2-vl": ("pixel_values", "image_grid_thw")}[family]
    for key in pixel_keys:
        assert torch.equal(torch.as_tensor(theirs[key]), torch.as_tensor(ours[key])), key


def _last_logits(hf_model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = hf_model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape
    return logits[0, -1]


def test_forward_with_images_gives_finite_logits_that_depend_on_them(
    family: TinyModelFamily, model_dir: Path, hf_model: Any
) -> None:
    prompt = _chat_prompt(model_dir, 2, "What differs between these pictures?")
    first = _pattern_image(70, 45, shift=0)
    second = _pattern_image(40, 90, shift=0)
    logits = _last_logits(hf_model, _model_inputs(family, model_dir, prompt, [first, second]))
    assert logits.shape == (_text_config(model_dir)["vocab_size"],)
    assert torch.isfinite(logits).all()
    assert logits.std().item() > 0.05  # not degenerate: tokens are told apart
    shifted = _pattern_image(70, 45, shift=100)
    changed = _last_logits(hf_model, _model_inputs(family, model_dir, prompt, [shifted, second]))
    # The image's pixels reach the output: the vision tower and projector are wired in.
    assert (changed - logits).abs().max().item() > 1e-2


# exllamav2 (its pure-Python config and tokenizer)


def test_exllamav2_reads_the_architecture_and_sizes(
    family: TinyModelFamily, model_dir: Path
) -> None:
    config = ExLlamaV2Config(str(model_dir))
    text_config = _text_config(model_dir)
    hf = _config(model_dir)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (
        text_config["hidden_size"],
        text_config["intermediate_size"],
        text_config["num_hidden_layers"],
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (
        text_config["num_attention_heads"],
        text_config["num_key_value_heads"],
        64,
    )
    assert config.vocab_size == text_config["vocab_size"]
    assert config.vision_hidden_size == 128
    assert config.vision_head_dim == 64
    assert config.vision_num_layers == 2
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        stored = set(weights.keys())
        shapes = {name: weights.get_slice(name).get_shape() for name in stored}
    # prepare() found every tensor under the names it looks for.
    assert set(config.tensor_file_map) == stored
    if family == "pixtral":
        assert config.architecture == "LlavaForConditionalGeneration"
        assert config.vision_model_type == "pixtral"
        assert config.vision_patch_size == {"height": 16, "width": 16}
        assert config.vision_spatial_merge_size == 1
        assert config.vision_size == {"longest_edge": 256}
        assert config.vision_feature_layer == hf["vision_feature_layer"]
        projector_inner = shapes["multi_modal_projector.linear_1.weight"][0]
        assert not any(name.startswith("model.") for name in stored)  # Llava keeps its prefixes
    else:
        assert config.architecture == "Qwen2VLForConditionalGeneration"
        assert config.vision_model_type == "qwen2"
        assert config.vision_patch_size == {"height": 14, "width": 14}
        assert config.vision_spatial_merge_size == 2
        assert config.vision_temporal_patch_size == 2
        assert (config.vision_min_pixels, config.vision_max_pixels) == (3136, 100352)
        assert sum(config.mrope_section) == config.head_dim // 2
        projector_inner = shapes["visual.merger.mlp.0.weight"][0]
    # exllamav2 does not read the projector's inner width from the weights but from the config.
    assert config.vision_merger_intermediate_size == projector_inner


def test_exllamav2_tokenizer_agrees_on_special_ids(
    family: TinyModelFamily, model_dir: Path
) -> None:
    config = ExLlamaV2Config(str(model_dir))
    exl = ExLlamaV2Tokenizer(config)
    ours = HFTextTokenizer.from_model_dir(model_dir)
    hf = _config(model_dir)
    text_config = _text_config(model_dir)
    assert exl.bos_token_id == ours.bos_token_id == text_config["bos_token_id"]
    assert exl.eos_token_id == text_config["eos_token_id"]
    if family == "pixtral":
        pieces = {"[IMG]": hf["image_token_index"], "[IMG_BREAK]": 12, "[IMG_END]": 13}
    else:
        pieces = {
            "<|image_pad|>": hf["image_token_id"],
            "<|vision_start|>": hf["vision_start_token_id"],
            "<|vision_end|>": hf["vision_end_token_id"],
        }
    assert {piece: exl.single_id(piece) for piece in pieces} == pieces
    assert {piece: ours.special_pieces[piece] for piece in pieces} == pieces


# The command


def _vlmq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "make-tiny-model", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_command_writes_the_model_and_guards_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    refused = _vlmq("--family", "qwen2-vl", "--seed", "3", str(target))
    assert refused.returncode == 2
    assert "not empty" in refused.stderr and "--force" in refused.stderr
    assert [p.name for p in target.iterdir()] == ["notes.txt"]

    done = _vlmq("--family", "qwen2-vl", "--seed", "3", "--force", str(target))
    assert done.returncode == 0, done.stderr
    for name in tiny_model_file_names("qwen2-vl"):
        assert name in done.stdout
    write_tiny_model(tmp_path / "expected", "qwen2-vl", seed=3)
    assert _read_all(target) == _read_all(tmp_path / "expected") | {"notes.txt": b"mine"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--family", "llava"], "'llava' is not one of 'pixtral', 'qwen2-vl'"),
        (["--family", "pixtral", "--seed", "-1"], "seed must be"),
        (["--family", "pixtral", "--seed", "x"], "seed must be an integer"),
        (["--seed", "1"], "--family"),
    ],
)
def test_command_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = _vlmq(*args, str(tmp_path / "model"))
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "model").exists()


def test_command_refuses_a_file_as_directory(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.write_text("not a directory")
    result = _vlmq("--family", "pixtral", str(target))
    assert result.returncode == 2
    assert "not a directory" in result.stderr
