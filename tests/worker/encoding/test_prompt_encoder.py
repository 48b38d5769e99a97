"""The prompt encoder's own rules: errors, longest-first aliases, BOS, batching and caching."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.tiny_model_dirs import write_tiny_model_dir
from worker.encoding.prompt_encoder import PromptEncoder, alias_pattern, encode_prompt
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.errors import AliasWithoutSpanError, ConflictingSpansError, SpanWithoutAliasError
from worker.span import Span, SpanLayout
from worker.token_range import RESERVED_ID_BASE, TokenRange


def _span(
    alias: str,
    offset: int = 0,
    length: int = 3,
    text_rows: tuple[tuple[int, int], ...] | None = None,
) -> Span:
    token_range = TokenRange(epoch=0, first=RESERVED_ID_BASE + offset, length=length)
    layout = None if text_rows is None else SpanLayout(length, text_rows)
    return Span(alias, token_range, layout)


@dataclass
class _CountingTokenizer:
    """The real tokenizer, counting the calls that reach it."""

    inner: HFTextTokenizer
    calls: list[Sequence[str]] = field(default_factory=list)  # the texts of each call

    @property
    def bos_token_id(self) -> int | None:
        return self.inner.bos_token_id

    @property
    def adds_bos(self) -> bool:
        return self.inner.adds_bos

    @property
    def special_pieces(self) -> Mapping[str, int]:
        return self.inner.special_pieces

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        self.calls.append(texts)
        return self.inner.encode_texts(texts)

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(ids)


@dataclass
class _OtherSpecialPieces(_CountingTokenizer):
    """The real tokenizer with special pieces of the test's choosing."""

    pieces: Mapping[str, int] = field(default_factory=dict)

    @property
    def special_pieces(self) -> Mapping[str, int]:
        return self.pieces


@pytest.mark.parametrize(
    ("prompt", "spans", "stray"),
    [
        ("<image> What is this?", [], "<image>"),
        ("First <$EMB_3$>, then <$EMB_42$>.", [_span("<$EMB_3$>")], "<$EMB_42$>"),
        ("<img> and <image>", [_span("<img>")], "<image>"),
    ],
)
def test_alias_without_span_is_refused(
    tiny_tokenizer: HFTextTokenizer, prompt: str, spans: list[Span], stray: str
) -> None:
    with pytest.raises(AliasWithoutSpanError, match=re.escape(stray)) as caught:
        encode_prompt(tiny_tokenizer, prompt, spans)
    assert caught.value.alias == stray


def test_watched_aliases_are_configurable(tiny_tokenizer: HFTextTokenizer) -> None:
    watching_img = PromptEncoder(tiny_tokenizer, watched_aliases=[r"\[IMG\]"])
    with pytest.raises(AliasWithoutSpanError, match=re.escape("[IMG]")):
        watching_img.encode("Look: [IMG]", [])
    watching_nothing = PromptEncoder(tiny_tokenizer, watched_aliases=())
    as_text = watching_nothing.encode("<image>", [], add_bos=False)
    assert as_text == tiny_tokenizer.encode_texts(["<image>"])[0]


def test_span_without_alias_is_refused(tiny_tokenizer: HFTextTokenizer) -> None:
    spans = [_span("<image>"), _span("<$EMB_9$>", offset=3)]
    with pytest.raises(SpanWithoutAliasError, match=re.escape("<$EMB_9$>")) as caught:
        encode_prompt(tiny_tokenizer, "Only <image> here.", spans)
    assert caught.value.alias == "<$EMB_9$>"


@pytest.mark.parametrize(
    "other",
    [
        _span("<image>", offset=10),
        _span("<image>", length=4),
        _span("<image>", text_rows=((0, 5),)),
        _span("<image>", text_rows=((2, 6),)),
    ],
)
def test_conflicting_spans_are_refused(tiny_tokenizer: HFTextTokenizer, other: Span) -> None:
    with pytest.raises(ConflictingSpansError, match=re.escape("<image>")) as caught:
        encode_prompt(tiny_tokenizer, "<image> and <image>", [_span("<image>"), other])
    assert caught.value.alias == "<image>"


def test_the_same_image_twice_gets_the_same_ids(tiny_tokenizer: HFTextTokenizer) -> None:
    image = _span("<image>", length=4)
    once = encode_prompt(tiny_tokenizer, "<image>vs<image>", [image], add_bos=False)
    listed_twice = encode_prompt(tiny_tokenizer, "<image>vs<image>", [image, image], add_bos=False)
    image_ids = list(image.token_range.ids())
    between = tiny_tokenizer.encode_texts(["vs"])[0]
    assert once == listed_twice == image_ids + between + image_ids


@pytest.mark.parametrize("order", ["short-first", "long-first"])
def test_the_longest_alias_wins_over_its_prefix(
    tiny_tokenizer: HFTextTokenizer, order: str
) -> None:
    short, long = _span("<img>", offset=0, length=2), _span("<img>2", offset=2, length=3)
    spans = [short, long] if order == "short-first" else [long, short]
    ids = encode_prompt(tiny_tokenizer, "<img>2<img><img>22", spans, add_bos=False)
    short_ids, long_ids = list(short.token_range.ids()), list(long.token_range.ids())
    two = tiny_tokenizer.encode_texts(["2"])[0]
    assert ids == long_ids + short_ids + long_ids + two


def test_bos_comes_once_at_the_start(tiny_tokenizer: HFTextTokenizer) -> None:
    bos = tiny_tokenizer.bos_token_id
    assert bos is not None
    prompt, spans = "A <image> B <$EMB_1$> C", [_span("<image>"), _span("<$EMB_1$>", offset=3)]
    with_bos = encode_prompt(tiny_tokenizer, prompt, spans, add_bos=True)
    without = encode_prompt(tiny_tokenizer, prompt, spans, add_bos=False)
    assert with_bos == [bos, *without]
    assert bos not in without


def test_no_bos_where_the_model_has_none(tmp_path: Path) -> None:
    tokenizer = HFTextTokenizer.from_model_dir(
        write_tiny_model_dir(tmp_path, "qwen2-vl", with_config=False)
    )
    assert tokenizer.bos_token_id is None
    spans = [_span("<image>")]
    assert encode_prompt(tokenizer, "Hi <image>", spans, add_bos=True) == encode_prompt(
        tokenizer, "Hi <image>", spans, add_bos=False
    )


@dataclass
class _SaysBos(_CountingTokenizer):
    """The real tokenizer, with the model's own BOS choice of the test's choosing."""

    says: bool = False

    @property
    def adds_bos(self) -> bool:
        return self.says


@pytest.mark.parametrize("says", [True, False])
def test_bos_left_to_the_model_is_its_tokenizers_choice(
    tiny_tokenizer: HFTextTokenizer, says: bool
) -> None:
    encoder = PromptEncoder(_SaysBos(tiny_tokenizer, says=says))
    prompt, spans = "A <image> B", [_span("<image>")]
    assert encoder.encode(prompt, spans) == encoder.encode(prompt, spans, add_bos=says)
    assert encoder.encode_many([(prompt, spans)]) == [encoder.encode(prompt, spans, add_bos=says)]
    # An explicit choice wins over the model's.
    assert encoder.encode(prompt, spans, add_bos=not says) != encoder.encode(prompt, spans)


ITEMS: list[tuple[str, list[Span]]] = [
    ("", []),
    ("Just text, no image.", []),
    ("<image>", [_span("<image>")]),
    ("<$EMB_1$>[INST]<|im_start|> two <$EMB_2$>", [_span("<$EMB_1$>"), _span("<$EMB_2$>", 3)]),
    ("Café 你好 🐱 <image><image>", [_span("<image>", 7, 2)]),
    ("<img>2<img>", [_span("<img>"), _span("<img>2", 3)]),
]


@pytest.mark.parametrize("add_bos", [True, False])
def test_encode_many_equals_encoding_one_by_one(
    tiny_tokenizer: HFTextTokenizer, add_bos: bool
) -> None:
    encoder = PromptEncoder(tiny_tokenizer)
    one_by_one = [encoder.encode(prompt, spans, add_bos=add_bos) for prompt, spans in ITEMS]
    assert encoder.encode_many(ITEMS, add_bos=add_bos) == one_by_one
    assert encoder.encode_many([], add_bos=add_bos) == []


def test_encode_many_tokenizes_all_text_in_one_call(tiny_tokenizer: HFTextTokenizer) -> None:
    one_by_one = _CountingTokenizer(tiny_tokenizer)
    for prompt, spans in ITEMS * 100:
        PromptEncoder(one_by_one).encode(prompt, spans)
    batched = _CountingTokenizer(tiny_tokenizer)
    PromptEncoder(batched).encode_many(ITEMS * 100)
    assert len(batched.calls) == 1
    assert list(batched.calls[0]) == [text for call in one_by_one.calls for text in call]
    # Empty text between aliases and special pieces is never sent to the tokenizer.
    assert "" not in batched.calls[0]


def test_a_shared_alias_set_is_compiled_once(tiny_tokenizer: HFTextTokenizer) -> None:
    # Aliases no other test uses, so the cache cannot already hold their pattern.
    first, second = (f"<$EMB_{uuid.uuid4().int}$>" for _ in range(2))
    spans = [_span(first), _span(second, offset=3)]
    items = [(f"Prompt {n}: {first} and {second}", spans) for n in range(1000)]
    before = alias_pattern.cache_info()
    PromptEncoder(tiny_tokenizer).encode_many(items)
    after = alias_pattern.cache_info()
    assert after.misses - before.misses == 1
    assert after.hits - before.hits == 999


@pytest.mark.parametrize(
    ("pieces", "expected_special"),
    [({"<s>": 1, "<s>x": 900}, [1]), ({"<s>x": 900, "<s>": 1}, [900])],
)
def test_special_pieces_are_matched_in_the_tokenizers_order(
    tiny_tokenizer: HFTextTokenizer, pieces: dict[str, int], expected_special: list[int]
) -> None:
    # exllamav2 matches special pieces by regex alternation in its dict's order: at one place,
    # the first listed piece that matches wins, even when a later one is longer.
    tokenizer = _OtherSpecialPieces(tiny_tokenizer, pieces=pieces)
    ids = encode_prompt(tokenizer, "<s>x", [], add_bos=False)
    rest = tiny_tokenizer.encode_texts(["x"])[0] if expected_special == [1] else []
    assert ids == expected_special + rest


def test_a_bad_prompt_in_a_batch_is_named(tiny_tokenizer: HFTextTokenizer) -> None:
    items = [*ITEMS, ("<$EMB_77$> without its span", [])]
    with pytest.raises(AliasWithoutSpanError) as caught:
        PromptEncoder(tiny_tokenizer).encode_many(items)
    assert caught.value.alias == "<$EMB_77$>"
