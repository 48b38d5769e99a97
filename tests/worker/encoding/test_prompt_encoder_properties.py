"""Properties of an encoded prompt, checked on prompts built from known pieces.

A prompt is drawn as a sequence of text, special-token pieces and aliases. Text never contains
the characters that open special pieces or aliases, so the drawn structure is the true one and
the encoder's output can be checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.encoding.prompt_encoder import encode_prompt
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.span import Span
from worker.token_range import RESERVED_ID_BASE, TokenRange

ALIASES = ["<image>", "<$EMB_1$>", "<$EMB_12$>", "<img>", "<img>2"]
PLAIN_ADDED_TOKENS = ["<tool_call>", "</tool_call>"]
# Without "2", no text after "<img>" can turn it into "<img>2".
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>[]$2"), max_size=12)


@dataclass(frozen=True)
class Segment:
    kind: str  # "text", "special" or "alias"
    content: str


@dataclass(frozen=True)
class Case:
    segments: list[Segment]
    spans: list[Span]
    add_bos: bool

    @property
    def prompt(self) -> str:
        return "".join(segment.content for segment in self.segments)


@st.composite
def cases(draw: st.DrawFn, special_pieces: list[str]) -> Case:
    aliases = draw(st.lists(st.sampled_from(ALIASES), unique=True, max_size=3))
    kinds = [
        TEXT.map(lambda text: Segment("text", text)),
        st.sampled_from(PLAIN_ADDED_TOKENS).map(lambda token: Segment("text", token)),
        st.sampled_from(special_pieces).map(lambda piece: Segment("special", piece)),
    ]
    if aliases:
        kinds.append(st.sampled_from(aliases).map(lambda alias: Segment("alias", alias)))
    segments = draw(st.lists(st.one_of(kinds), max_size=10))
    spans, first = [], RESERVED_ID_BASE + draw(st.integers(0, 10_000))
    for alias in dict.fromkeys(s.content for s in segments if s.kind == "alias"):
        length = draw(st.integers(1, 6))
        spans.append(
            Span(alias, TokenRange(epoch=draw(st.integers(0, 3)), first=first, length=length))
        )
        first += length + draw(st.integers(0, 2))
    return Case(segments, spans, draw(st.booleans()))


def _text_runs(segments: list[Segment]) -> list[str]:
    """The texts between specials and aliases, as the encoder tokenizes them."""
    runs, current = [], ""
    for segment in segments:
        if segment.kind == "text":
            current += segment.content
        else:
            runs.append(current)
            current = ""
    return [run for run in [*runs, current] if run]


def _aliases_and_texts_between(segments: list[Segment]) -> tuple[list[str], list[str]]:
    aliases, texts, current = [], [], ""
    for segment in segments:
        if segment.kind == "alias":
            aliases.append(segment.content)
            texts.append(current)
            current = ""
        else:
            current += segment.content
    return aliases, [*texts, current]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_encoded_prompt_properties(tiny_tokenizer: HFTextTokenizer, data: st.DataObject) -> None:
    tokenizer = tiny_tokenizer
    case = data.draw(cases(sorted(tokenizer.special_pieces)))
    ids = encode_prompt(tokenizer, case.prompt, case.spans, add_bos=case.add_bos)
    span_of = {span.alias: span for span in case.spans}
    has_bos = case.add_bos and tokenizer.bos_token_id is not None

    # Length: BOS, the text's own tokens, one ID per special piece, a range per alias occurrence.
    text_tokens = sum(len(ids) for ids in tokenizer.encode_texts(_text_runs(case.segments)))
    specials = sum(segment.kind == "special" for segment in case.segments)
    image_rows = sum(
        span_of[s.content].token_range.length for s in case.segments if s.kind == "alias"
    )
    assert len(ids) == has_bos + text_tokens + specials + image_rows

    # Walk the output: reserved IDs must come as whole ranges, each where its alias stood, and
    # the IDs between them must decode to exactly the prompt's text between those aliases.
    span_at = {span.token_range.first: span for span in case.spans}
    if has_bos:
        assert ids[0] == tokenizer.bos_token_id
    body = ids[1:] if has_bos else ids
    aliases_seen, texts_seen, run, position = [], [], [], 0
    while position < len(body):
        token = body[position]
        if token < RESERVED_ID_BASE:
            run.append(token)
            position += 1
            continue
        span = span_at[token]
        assert body[position : position + span.token_range.length] == list(span.token_range.ids())
        aliases_seen.append(span.alias)
        texts_seen.append(tokenizer.decode(run))
        run = []
        position += span.token_range.length
    texts_seen.append(tokenizer.decode(run))
    aliases, texts = _aliases_and_texts_between(case.segments)
    assert aliases_seen == aliases
    assert texts_seen == texts
    assert "".join(t + a for t, a in zip(texts_seen, [*aliases_seen, ""], strict=True)) == (
        case.prompt
    )
