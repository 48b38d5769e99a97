"""Tiny, real byte-level BPE tokenizers in the layout of a model family's Hugging Face repo.

Tests (and, later, the tiny model writer) need a tokenizer that behaves like the real one where
it matters to vlmq: the same special tokens at the same kind of IDs, the same BOS/EOS choices,
byte-level BPE so any Unicode text survives a round trip. The vocabulary is learned at call
time from a small embedded corpus, so no file is downloaded and every run writes the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

TinyTokenizerFamily = Literal["pixtral", "qwen2-vl"]

# Learned tokens plus the byte alphabet; special tokens come on top.
NUM_LEARNED_TOKENS = 800


@dataclass(frozen=True, slots=True)
class _FamilyLayout:
    """Where a family keeps its special tokens and which of them play BOS/EOS/UNK/PAD."""

    leading_special: tuple[str, ...]  # specials at IDs 0.. before the learned vocab (Mistral)
    trailing_special: tuple[str, ...]  # specials appended after the learned vocab (Qwen)
    trailing_plain: tuple[str, ...]  # added tokens that are not special
    split_pattern: str  # the pre-tokenizer's word-splitting regex, in the family's style
    bos_token: str | None
    eos_token: str
    unk_token: str | None
    pad_token: str
    tokenizer_class: str
    model_max_length: int


# Mistral's Tekken tokenizer reserves its first IDs for control tokens; these keep the real
# IDs ([IMG] = 10, [IMG_BREAK] = 12, [IMG_END] = 13), so configs can use the real numbers.
_PIXTRAL = _FamilyLayout(
    leading_special=(
        "<unk>",
        "<s>",
        "</s>",
        "[INST]",
        "[/INST]",
        "[AVAILABLE_TOOLS]",
        "[/AVAILABLE_TOOLS]",
        "[TOOL_RESULTS]",
        "[/TOOL_RESULTS]",
        "[TOOL_CALLS]",
        "[IMG]",
        "<pad>",
        "[IMG_BREAK]",
        "[IMG_END]",
    ),
    trailing_special=(),
    trailing_plain=(),
    split_pattern=(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    bos_token="<s>",
    eos_token="</s>",
    unk_token="<unk>",
    pad_token="<pad>",
    tokenizer_class="PreTrainedTokenizerFast",
    model_max_length=1_000_000,
)

# Qwen2-VL appends its specials after the learned vocab, has no BOS in tokenizer_config.json
# (its config.json names <|endoftext|> as BOS instead) and ends turns with <|im_end|>.
# <tool_call> and </tool_call> are plain added tokens, as in Qwen2.5-VL.
_QWEN2_VL = _FamilyLayout(
    leading_special=(),
    trailing_special=(
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    trailing_plain=("<tool_call>", "</tool_call>"),
    split_pattern=(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    bos_token=None,
    eos_token="<|im_end|>",
    unk_token=None,
    pad_token="<|endoftext|>",
    tokenizer_class="Qwen2Tokenizer",
    model_max_length=32768,
)

_LAYOUTS: dict[str, _FamilyLayout] = {"pixtral": _PIXTRAL, "qwen2-vl": _QWEN2_VL}

_CORPUS = """\
The harbour was quiet before dawn. Fishing boats rocked against the pier, their ropes creaking,
while a grey cat walked the length of the wall as if it owned the whole town. By six o'clock the
market opened: crates of lemons, oranges and figs, baskets of bread still warm from the oven,
and a man selling batteries, umbrellas and second-hand radios from the back of a blue van.

Describe the image in one sentence. What colour is the car on the left? How many people are
standing near the window, and what are they holding? Read the text on the sign and translate it.
Is the photograph taken indoors or outdoors? Count the birds on the wire. Which object is closest
to the camera? Write a short caption for this picture, then list three details you notice.

A photo of a red bicycle leaning against a brick wall. Two children playing football in a park.
A plate of pasta with tomato sauce, basil and grated cheese. A mountain lake under heavy clouds.
A street at night: neon signs, wet asphalt, a taxi waiting at the traffic light. A chart showing
sales by quarter, with the third quarter highest at 42.7 million and the first lowest at 18.3.

Numbers and symbols matter too: 3.14159, 2,048 tokens, 100% sure, $19.99, 7:45 pm, 2024-06-01,
x = (a + b) * c / 2, e-mail: someone@example.com, path/to/file.txt, #hashtag, [brackets] and
{braces}, "quotes", 'apostrophes', semi;colons, under_scores, tabs\tand\tnewlines.

def caption(image, prompt):
    tokens = encode(prompt)
    return model.generate(image, tokens, max_new_tokens=64)

Le café était fermé, mais la boulangerie à côté vendait des croissants et des pains au chocolat.
Où est la gare ? Über den Wolken muss die Freiheit wohl grenzenlos sein. Señor Núñez comió
jalapeños en la mañana. Ça va très bien, merci. Crème brûlée, façade, naïve, coöperate, Zürich,
São Paulo, Kraków, Reykjavík, smørrebrød, Ærø, Œuvre, İstanbul, Đà Nẵng.

Москва — столица России. Привет, как дела? Ελληνικά γράμματα: α, β, γ, δ. שלום עולם. مرحبا بالعالم.
नमस्ते दुनिया। สวัสดีครับ

今日は良い天気ですね。猫が窓の外を見ています。この画像には何が写っていますか？
我们在图片中看到一只小狗和一个红色的球。请用一句话描述这张照片。北京、上海、广州。
한국어 문장도 조금 있습니다. 사진 속에 무엇이 보이나요?

Emoji appear in captions and chats: 😀 😂 🐱 🐶 🚲 🌧️ ☀️ 🍕 🎉 ❤️ 👍🏽 👩‍💻 🇯🇵 🏳️‍🌈 and
mathematical letters like 𝔸𝕓𝕔 or ∑ ∫ √ ≈ ≠ ≤ ≥ ∞ → ← ↑ ↓ • … – — « » “ ” ‘ ’.

The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump!
"""  # noqa: RUF001 - look-alike letters from other scripts are the point of this corpus


def write_tiny_tokenizer(directory: Path, family: TinyTokenizerFamily) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for `family`."""
    layout = _LAYOUTS[family]
    tokenizer = _train(layout)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    _write_json(directory / "tokenizer_config.json", _tokenizer_config(layout, tokenizer))
    _write_json(directory / "special_tokens_map.json", _special_tokens_map(layout))


def _train(layout: _FamilyLayout) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(layout.split_pattern), behavior="isolated"),
            # No prefix space and no second regex: the bytes of the text are all that is encoded.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(layout.leading_special) + NUM_LEARNED_TOKENS,
        show_progress=False,
        # Every byte is in the vocabulary, so no text ever needs an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[_added_token(token, special=True) for token in layout.leading_special],
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
    tokenizer.add_special_tokens([_added_token(t, special=True) for t in layout.trailing_special])
    tokenizer.add_tokens([_added_token(t, special=False) for t in layout.trailing_plain])
    return tokenizer


def _added_token(content: str, *, special: bool) -> AddedToken:
    return AddedToken(
        content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special
    )


def _tokenizer_config(layout: _FamilyLayout, tokenizer: Tokenizer) -> dict[str, Any]:
    added = tokenizer.get_added_tokens_decoder()
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(token_id): {
                "content": token.content,
                "lstrip": token.lstrip,
                "normalized": token.normalized,
                "rstrip": token.rstrip,
                "single_word": token.single_word,
                "special": token.special,
            }
            for token_id, token in sorted(added.items())
        },
        "additional_special_tokens": list(_additional_special(layout)),
        "bos_token": layout.bos_token,
        "clean_up_tokenization_spaces": False,
        "eos_token": layout.eos_token,
        "model_max_length": layout.model_max_length,
        "pad_token": layout.pad_token,
        "tokenizer_class": layout.tokenizer_class,
        "unk_token": layout.unk_token,
    }


def _special_tokens_map(layout: _FamilyLayout) -> dict[str, Any]:
    named = {
        "bos_token": layout.bos_token,
        "eos_token": layout.eos_token,
        "pad_token": layout.pad_token,
        "unk_token": layout.unk_token,
    }
    entry: dict[str, Any] = {"additional_special_tokens": list(_additional_special(layout))}
    for role, content in named.items():
        if content is not None:
            entry[role] = {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            }
    return entry


def _additional_special(layout: _FamilyLayout) -> tuple[str, ...]:
    named = {layout.bos_token, layout.eos_token, layout.unk_token, layout.pad_token}
    return tuple(t for t in layout.leading_special + layout.trailing_special if t not in named)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
