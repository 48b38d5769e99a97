"""vlmq's prompt encoding gives exactly the IDs exllamav2's tokenizer gives.

exllamav2 0.3.2 runs here for real (its pure-Python tokenizer and embedding containers), on tiny
tokenizers of both families and on variants of their files that take exllamav2's other paths
to special tokens and BOS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.exllamav2_cpu import exllamav2_encode, exllamav2_tokenizer
from tests.support.tiny_model_dirs import FAMILIES, edit_json, write_json, write_tiny_model_dir
from worker.encoding.prompt_encoder import encode_prompt
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.span import Span
from worker.token_range import RESERVED_ID_BASE, TokenRange


def _drop_config(model_dir: Path) -> None:
    (model_dir / "config.json").unlink()


def _integral_float_bos_and_eos_list(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    bos = config.get("bos_token_id") or 1
    eos = config.get("eos_token_id") or 2
    edit_json(
        model_dir / "config.json",
        lambda c: c | {"bos_token_id": float(bos), "eos_token_id": [eos, bos]},
    )


def _named_tokens_as_dicts(model_dir: Path) -> None:
    _drop_config(model_dir)

    def as_dicts(config: dict[str, Any]) -> dict[str, Any]:
        for key in ("bos_token", "eos_token"):
            if isinstance(config.get(key), str):
                config[key] = {"content": config[key], "lstrip": False, "rstrip": False}
        return config

    edit_json(model_dir / "tokenizer_config.json", as_dicts)


def _no_bos_anywhere(model_dir: Path) -> None:
    # Neither file names BOS, so exllamav2 falls back to ID 1.
    _drop_config(model_dir)
    edit_json(
        model_dir / "tokenizer_config.json",
        lambda c: {k: v for k, v in c.items() if k != "bos_token"},
    )


def _added_tokens_json(model_dir: Path) -> None:
    # exllamav2 takes every entry of added_tokens.json as special, including a plain added token,
    # and "[IMG" is a prefix of earlier pieces, so the alternation's order decides between them.
    write_json(model_dir / "added_tokens.json", {"<tool_call>": 814, "[IMG": 900, "#!": 901})


def _decoder_marks_plain_token_special(model_dir: Path) -> None:
    def mark(config: dict[str, Any]) -> dict[str, Any]:
        decoder = config["added_tokens_decoder"]
        last = decoder[max(decoder, key=int)]["content"]
        for token in decoder.values():
            token["special"] = True
        decoder["950"] = {"content": "<|extra|>", "special": True}
        decoder["951"] = {"content": "<|plain|>", "special": False}
        # A piece declared again under another ID keeps its place but takes the new ID.
        decoder["960"] = {"content": last, "special": True}
        return config

    edit_json(model_dir / "tokenizer_config.json", mark)


def _model_unk_token(piece: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def set_unk(tokenizer: dict[str, Any]) -> dict[str, Any]:
        tokenizer["model"]["unk_token"] = piece
        return tokenizer

    return set_unk


def _unk_is_plain_vocab_piece(model_dir: Path) -> None:
    # A plain piece as UNK becomes a special piece: every "e" in a prompt is then that token.
    edit_json(model_dir / "tokenizer.json", _model_unk_token("e"))


def _unk_equals_pad(model_dir: Path) -> None:
    # With UNK's ID equal to PAD's, exllamav2 drops the UNK piece from its special pieces.
    edit_json(model_dir / "tokenizer.json", _model_unk_token("e"))
    edit_json(model_dir / "tokenizer_config.json", lambda c: c | {"pad_token": "e"})


VARIANTS: dict[str, Callable[[Path], None]] = {
    "like-real-repo": lambda _: None,
    "no-config-json": _drop_config,
    "float-bos-eos-list": _integral_float_bos_and_eos_list,
    "named-tokens-as-dicts": _named_tokens_as_dicts,
    "no-bos-anywhere": _no_bos_anywhere,
    "added-tokens-json": _added_tokens_json,
    "decoder-marks-special": _decoder_marks_plain_token_special,
    "unk-plain-piece": _unk_is_plain_vocab_piece,
    "unk-equals-pad": _unk_equals_pad,
}


@pytest.fixture(
    scope="module",
    params=[(family, variant) for family in FAMILIES for variant in VARIANTS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    family, variant = request.param
    directory = write_tiny_model_dir(tmp_path_factory.mktemp(f"{family}-{variant}"), family)
    VARIANTS[variant](directory)
    return directory


@pytest.fixture(scope="module")
def tokenizers(model_dir: Path) -> tuple[HFTextTokenizer, Any]:
    return HFTextTokenizer.from_model_dir(model_dir), exllamav2_tokenizer(model_dir)


def test_special_pieces_and_bos_match(tokenizers: tuple[HFTextTokenizer, Any]) -> None:
    ours, reference = tokenizers
    assert list(ours.special_pieces.items()) == list(reference.extended_piece_to_id.items())
    assert ours.bos_token_id == reference.bos_token_id


def test_variants_take_the_paths_they_name(tmp_path: Path) -> None:
    """Guards the variants above: each one must change what exllamav2 decides."""
    decided = {}
    for variant, apply in VARIANTS.items():
        directory = write_tiny_model_dir(tmp_path / variant, "qwen2-vl")
        apply(directory)
        reference = exllamav2_tokenizer(directory)
        decided[variant] = (list(reference.extended_piece_to_id.items()), reference.bos_token_id)
    backend = HFTextTokenizer.from_model_dir(tmp_path / "like-real-repo").backend
    e_id = backend.token_to_id("e")
    assert decided["like-real-repo"][1] == backend.token_to_id("<|endoftext|>")
    assert decided["no-config-json"][1] is None
    assert decided["float-bos-eos-list"][1] == backend.token_to_id("<|endoftext|>")
    assert decided["no-bos-anywhere"][1] == 1
    assert ("e", e_id) in decided["unk-plain-piece"][0]
    assert ("e", e_id) not in decided["unk-equals-pad"][0]
    assert ("<tool_call>", 814) in decided["added-tokens-json"][0]
    assert ("[IMG", 900) in decided["added-tokens-json"][0]
    assert ("<|extra|>", 950) in decided["decoder-marks-special"][0]
    assert ("<tool_call>", 814) in decided["decoder-marks-special"][0]
    assert ("</tool_call>", 960) in decided["decoder-marks-special"][0]


def test_unk_piece_missing_from_vocabulary_is_left_out(tmp_path: Path) -> None:
    # exllamav2 cannot load such a model (it maps the piece to None, then compares None with
    # IDs); vlmq leaves the piece to the text tokenizer instead.
    directory = write_tiny_model_dir(tmp_path, "pixtral")
    edit_json(directory / "tokenizer.json", _model_unk_token("<nowhere>"))
    with pytest.raises(TypeError):
        exllamav2_tokenizer(directory)
    tokenizer = HFTextTokenizer.from_model_dir(directory)
    assert "<nowhere>" not in tokenizer.special_pieces
    assert (
        encode_prompt(tokenizer, "<nowhere>", [], add_bos=False)
        == tokenizer.encode_texts(["<nowhere>"])[0]
    )


def _spans(aliases: list[str], lengths: list[int] | None = None) -> list[Span]:
    spans, first = [], RESERVED_ID_BASE
    for index, alias in enumerate(aliases):
        length = lengths[index] if lengths else 2 + index
        spans.append(Span(alias, TokenRange(epoch=0, first=first, length=length)))
        first += length
    return spans


EXAMPLES: list[tuple[str, list[str]]] = [
    ("", []),
    ("Describe the picture.", []),
    ("<image>", ["<image>"]),
    ("<image>What is this?", ["<image>"]),
    ("What is this?<image>", ["<image>"]),
    ("Compare <image> with <$EMB_7$> and <$EMB_12$>.", ["<image>", "<$EMB_7$>", "<$EMB_12$>"]),
    ("<$EMB_7$><$EMB_12$><image>", ["<$EMB_7$>", "<$EMB_12$>", "<image>"]),
    ("Same twice: <image> and again <image>!", ["<image>"]),
    ("<img>2 then <img> and <img>22", ["<img>", "<img>2"]),
    ("Café crème, naïve Zürich — 你好世界 🐱👩‍💻🇯🇵 <image>", ["<image>"]),
    ("<s>[INST] <image>What is shown?[/INST]</s>", ["<image>"]),
    ("[INST[INST]][/INST [IMG][IMG_BREAK][IMG_END]<pad><unk>", []),
    ("<|im_start|>user\n<|vision_start|><image><|vision_end|>Hi<|im_end|>\n", ["<image>"]),
    ("<|im_start|<|im_end|>|><|endoftext|><tool_call>{}</tool_call><|plain|>", []),
    ("<tool_call><image></tool_call>#!#[IMG[IMG]", ["<image>"]),
    ("eee e<image>e", ["<image>"]),
    ("\n\n  spaces   and\ttabs\n<image>\n", ["<image>"]),
    # exllamav2's aliases have ASCII digits; these are text to it (Arabic-Indic and fullwidth 3).
    ("<$EMB_\u0663$> and <$EMB_\uff13$> are text", []),
    ("<$EMB_\u0663$><image>", ["<image>"]),
]


@pytest.mark.parametrize("add_bos", [True, False])
@pytest.mark.parametrize(("prompt", "aliases"), EXAMPLES)
def test_example_prompts_match(
    tokenizers: tuple[HFTextTokenizer, Any], prompt: str, aliases: list[str], add_bos: bool
) -> None:
    ours, reference = tokenizers
    spans = _spans(aliases)
    expected = exllamav2_encode(reference, prompt, spans, add_bos)
    assert encode_prompt(ours, prompt, spans, add_bos=add_bos) == expected


# Aliases of both styles; "<img>" is a prefix of "<img>#", and "#" never occurs in drawn text or
# fragments, so what follows "<img>" cannot turn it into the longer alias.
ALIASES = ["<image>", "<$EMB_0$>", "<$EMB_17$>", "<$EMB_170$>", "<img>", "<img>#"]

# Whole and broken special pieces of both families, plain added tokens and tricky text.
FRAGMENTS = [
    "<s>", "</s>", "<unk>", "<pad>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]",
    "[INST", "INST]", "[/", "[IMG", "_BREAK]", "</", "<", ">", "[", "]", "|", "/", "e",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|im_", "start|>", "<|", "|>", "<tool_call>", "</tool_call>", "<|plain|>",
    " the", "Café", "naïve", "你好", "世界", "🐱", "👩‍💻", "🇯🇵", "\n", "\n\n", "  ", "\t",
]  # fmt: skip

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="$#"), max_size=10)


@st.composite
def prompts_with_spans(draw: st.DrawFn) -> tuple[str, list[Span]]:
    aliases = draw(st.lists(st.sampled_from(ALIASES), unique=True, max_size=4))
    pieces = [
        TEXT.map(lambda text: (False, text)),
        st.sampled_from(FRAGMENTS).map(lambda f: (False, f)),
    ]
    if aliases:
        pieces.append(st.sampled_from(aliases).map(lambda alias: (True, alias)))
    segments = draw(st.lists(st.one_of(pieces), max_size=12))
    used = list(dict.fromkeys(text for is_alias, text in segments if is_alias))
    lengths = draw(st.lists(st.integers(1, 5), min_size=len(used), max_size=len(used)))
    spans = _spans(used, lengths)
    # The same image listed twice is still one span.
    spans += draw(st.lists(st.sampled_from(spans), max_size=1)) if spans else []
    prompt = "".join(text for _, text in segments)
    # Drawn text may spell "<image>"; without a span for it, vlmq refuses the prompt by design.
    assume("<image>" not in prompt or "<image>" in used)
    return prompt, spans


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=prompts_with_spans(), add_bos=st.booleans())
def test_generated_prompts_match(
    tokenizers: tuple[HFTextTokenizer, Any], case: tuple[str, list[Span]], add_bos: bool
) -> None:
    ours, reference = tokenizers
    prompt, spans = case
    expected = exllamav2_encode(reference, prompt, spans, add_bos)
    assert encode_prompt(ours, prompt, spans, add_bos=add_bos) == expected


@pytest.fixture(scope="module")
def real_repo_tokenizers(tiny_model_dir: Path) -> tuple[HFTextTokenizer, Any]:
    return HFTextTokenizer.from_model_dir(tiny_model_dir), exllamav2_tokenizer(tiny_model_dir)


@settings(max_examples=300, deadline=None)
@given(case=prompts_with_spans(), add_bos=st.booleans())
def test_many_generated_prompts_match_like_real_repo(
    real_repo_tokenizers: tuple[HFTextTokenizer, Any], case: tuple[str, list[Span]], add_bos: bool
) -> None:
    ours, reference = real_repo_tokenizers
    prompt, spans = case
    expected = exllamav2_encode(reference, prompt, spans, add_bos)
    assert encode_prompt(ours, prompt, spans, add_bos=add_bos) == expected
