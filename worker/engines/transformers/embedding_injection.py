"""Injection: the input embeddings of a prompt whose IDs hold images' reserved ranges.

IDs below the reserved region are looked up in the language model's embedding table. IDs in a
span's range take that image's rows: its image rows from the vision features, its text rows
(special tokens around or inside the image) from the embedding table as well. The IDs that
transformers' own processor would have produced for the same prompt come out on the way, for
the positions (Qwen2-VL's M-RoPE) and for the reference test.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from worker.errors import InvalidRequestError
from worker.span import Span
from worker.token_range import RESERVED_ID_BASE


def placeholder_ids(ids: Sequence[int], spans: Sequence[Span], image_token_id: int) -> list[int]:
    """`ids` with each image row as `image_token_id` and each text row as its own token."""
    by_first = sorted(spans, key=lambda span: span.token_range.first)
    firsts = [span.token_range.first for span in by_first]
    row_tokens = []
    for span in by_first:
        row_token = [image_token_id] * span.token_range.length
        for offset, token_id in span.row_layout.text_rows:
            row_token[offset] = token_id
        row_tokens.append(row_token)
    out = []
    for token_id in ids:
        if token_id < RESERVED_ID_BASE:
            out.append(token_id)
            continue
        index = bisect.bisect_right(firsts, token_id) - 1
        if index < 0 or token_id >= by_first[index].token_range.end:
            raise InvalidRequestError(f"reserved ID {token_id} belongs to no span of the request")
        out.append(row_tokens[index][token_id - firsts[index]])
    return out


def inject(
    ids: torch.Tensor,
    spans: Sequence[Span],
    features: Sequence[torch.Tensor],
    image_token_id: int,
    embed_tokens: torch.nn.Module,
) -> torch.Tensor:
    """Input embeddings for one prompt. ids: [seq] -> [seq, hidden]."""
    token_ids = placeholder_ids(ids.tolist(), spans, image_token_id)
    embeds: torch.Tensor = embed_tokens(torch.tensor(token_ids, dtype=torch.long))
    for span, rows in zip(spans, features, strict=True):
        offsets = ids - span.token_range.first
        inside = (offsets >= 0) & (offsets < span.token_range.length)
        # Which image row each offset of the range holds; -1 where a text row is.
        image_row_of = torch.full((span.token_range.length,), -1, dtype=torch.long)
        image_offsets = torch.tensor(span.row_layout.image_row_offsets(), dtype=torch.long)
        image_row_of[image_offsets] = torch.arange(len(image_offsets))
        clamped = offsets.clamp(0, span.token_range.length - 1)
        row_index = torch.where(inside, image_row_of[clamped], -1)
        take = row_index >= 0
        embeds[take] = rows[row_index[take]].to(embeds.dtype)
    return embeds
