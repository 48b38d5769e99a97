"""Prompt encoding: a prompt with image aliases becomes one flat list of token IDs.

The prompt is split at its aliases; each alias becomes its span's reserved ID range, and the text
between them is tokenized with special-token pieces written in the text taken as those tokens.
For a given `add_bos`, the result is what exllamav2's `ExLlamaV2Tokenizer.encode(prompt,
add_bos=..., encode_special_tokens=True, embeddings=...)` returns for embeddings placed at the
spans' ranges, with two differences: an alias always wins over a shorter alias that is its
prefix, and a prompt whose aliases and spans do not fit together is refused instead of encoded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence

from worker.encoding.text_tokenizer import TextTokenizer
from worker.errors import AliasWithoutSpanError, ConflictingSpansError, SpanWithoutAliasError
from worker.span import Span

# Text that can only mean an image: exllamav2's automatic aliases and the common "<image>".
# Seeing one in a prompt without a span for it is an error, not text to tokenize.
# ASCII digits only: exllamav2's aliases are written with str(int), and it encodes "<$EMB_٣$>"
# (Arabic-Indic three) as text, so vlmq must not refuse it.
DEFAULT_WATCHED_ALIASES: tuple[str, ...] = (r"<\$EMB_[0-9]+\$>", re.escape("<image>"))

# One step of a prompt's plan: fixed IDs (an alias's range, a special token), or None for the
# next text piece, whose IDs come from the one tokenizer call made for the whole batch.
_Step = Sequence[int] | None


def encode_prompt(
    tokenizer: TextTokenizer, prompt: str, spans: Sequence[Span], add_bos: bool | None = None
) -> list[int]:
    """Encode one prompt; for many prompts, one `PromptEncoder.encode_many` call is faster."""
    return PromptEncoder(tokenizer).encode(prompt, spans, add_bos=add_bos)


@functools.lru_cache(maxsize=4096)
def alias_pattern(aliases: tuple[str, ...]) -> re.Pattern[str]:
    """A pattern that splits a prompt at `aliases` and keeps them, given longest first.

    At any one position a regex alternation takes the first alternative that matches, so the
    longest-first order lets "<img>2" win over "<img>".
    """
    return re.compile("(" + "|".join(map(re.escape, aliases)) + ")")


@functools.lru_cache(maxsize=16)
def _special_pattern(pieces: tuple[str, ...]) -> re.Pattern[str] | None:
    # Built exactly as exllamav2 builds its own, in the tokenizer's order: that order decides
    # which of two overlapping pieces wins.
    if not pieces:
        return None
    return re.compile("(" + "|".join(map(re.escape, pieces)) + ")")


class PromptEncoder:
    """Encodes prompts for one tokenizer."""

    def __init__(
        self, tokenizer: TextTokenizer, watched_aliases: Sequence[str] = DEFAULT_WATCHED_ALIASES
    ) -> None:
        """`watched_aliases` are regexes for alias-like text that must have a span."""
        self._tokenizer = tokenizer
        self._special_ids = dict(tokenizer.special_pieces)
        self._special_pattern = _special_pattern(tuple(self._special_ids))
        self._watched_pattern = (
            re.compile("|".join(f"(?:{pattern})" for pattern in watched_aliases))
            if watched_aliases
            else None
        )

    def encode(
        self, prompt: str, spans: Sequence[Span], add_bos: bool | None = None
    ) -> list[int]:
        return self.encode_many([(prompt, spans)], add_bos=add_bos)[0]

    def encode_many(
        self, items: Sequence[tuple[str, Sequence[Span]]], add_bos: bool | None = None
    ) -> list[list[int]]:
        """`add_bos`: True or False as exllamav2 takes it; None does what the model's own
        Hugging Face tokenizer does (Qwen2-VL's adds none, though its config.json names one)."""
        texts: list[str] = []
        plans = [self._plan(prompt, spans, texts) for prompt, spans in items]
        text_ids = iter(self._tokenizer.encode_texts(texts))
        bos_id = self._tokenizer.bos_token_id
        if add_bos is None:
            add_bos = self._tokenizer.adds_bos
        prefix = [bos_id] if add_bos and bos_id is not None else []
        return [_assemble(plan, prefix, text_ids) for plan in plans]

    def _plan(self, prompt: str, spans: Sequence[Span], texts: list[str]) -> list[_Step]:
        """The prompt's steps; its text pieces are appended to `texts`."""
        span_of = _span_by_alias(spans)
        if span_of:
            longest_first = tuple(sorted(span_of, key=lambda alias: (-len(alias), alias)))
            parts = alias_pattern(longest_first).split(prompt)
        else:
            parts = [prompt]
        # With one capturing group, split alternates text, alias, text, ..., text.
        found = set(parts[1::2])
        for alias in span_of:
            if alias not in found:
                raise SpanWithoutAliasError(
                    alias, f"a span was given for alias {alias!r}, which the prompt lacks"
                )
        plan: list[_Step] = []
        for index, part in enumerate(parts):
            if index % 2:
                plan.append(span_of[part].token_range.ids())
            else:
                self._check_no_stray_alias(part)
                self._plan_text(part, plan, texts)
        return plan

    def _plan_text(self, text: str, plan: list[_Step], texts: list[str]) -> None:
        pieces = self._special_pattern.split(text) if self._special_pattern else [text]
        for index, piece in enumerate(pieces):
            if index % 2:
                plan.append((self._special_ids[piece],))
            elif piece:
                texts.append(piece)
                plan.append(None)

    def _check_no_stray_alias(self, text: str) -> None:
        match = self._watched_pattern.search(text) if self._watched_pattern else None
        if match:
            alias = match.group()
            raise AliasWithoutSpanError(
                alias, f"the prompt contains alias {alias!r} but no span was given for it"
            )


def _span_by_alias(spans: Sequence[Span]) -> dict[str, Span]:
    """Spans keyed by alias; the same image given twice is one span."""
    span_of: dict[str, Span] = {}
    for span in spans:
        known = span_of.setdefault(span.alias, span)
        if known != span:
            raise ConflictingSpansError(
                span.alias, f"two different spans share alias {span.alias!r}: {known} and {span}"
            )
    return span_of


def _assemble(plan: list[_Step], prefix: list[int], text_ids: Iterator[list[int]]) -> list[int]:
    ids = list(prefix)
    for step in plan:
        ids.extend(next(text_ids) if step is None else step)
    return ids
