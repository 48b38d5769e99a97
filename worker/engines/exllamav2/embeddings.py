"""Image embeddings for exllamav2's generator, placed at the allocator's token ranges.

exllamav2 injects an `ExLlamaV2MMEmbedding` wherever a prompt holds IDs in
`[first_index, first_index + length)`, and its paged cache hashes pages by those IDs. Its
constructor takes the range from a process-global counter that starts at 1,000,000,000, the
same region the cluster-wide allocator hands out; an embedding made that way would move the
counter and could meet IDs of the allocator. `place_embedding` therefore never calls the
constructor: it fills the container's attributes itself (the same ones, checked against
exllamav2 0.3.2 by the tests) with the allocator's range, so the global counter never moves and
every range in this process comes from the allocator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from worker.bounded_lru import BoundedLru
from worker.engines.exllamav2.model import EmbedTokens
from worker.errors import InvalidRequestError
from worker.span import Span
from worker.token_range import TokenRange


def assemble_span_rows(
    span: Span, image_rows: torch.Tensor, embed_tokens: EmbedTokens
) -> torch.Tensor:
    """Every row of the span's range: image rows from the tower, text rows from the table.

    image_rows: [num_image_rows, hidden] -> [num_rows, hidden], float16, CPU.
    """
    layout = span.row_layout
    hidden = image_rows.shape[-1]
    rows = torch.empty(layout.num_rows, hidden, dtype=torch.float16)
    rows[layout.image_row_offsets()] = image_rows.to("cpu", torch.float16)
    if layout.text_rows:
        offsets = [offset for offset, _ in layout.text_rows]
        token_ids = torch.tensor([token_id for _, token_id in layout.text_rows], dtype=torch.long)
        with torch.inference_mode():
            text_rows = embed_tokens(token_ids)  # [len(text_rows), hidden]
        rows[offsets] = text_rows.to("cpu", torch.float16).reshape(len(offsets), hidden)
    return rows


def place_embedding(model: Any, span: Span, rows: torch.Tensor) -> Any:
    """An `ExLlamaV2MMEmbedding` of `rows` at the span's token range, built without its counter."""
    from exllamav2.generator.dynamic_embeddings import ExLlamaV2MMEmbedding

    layout = span.row_layout
    if rows.shape != (span.token_range.length, model.config.hidden_size):
        raise InvalidRequestError(
            f"span {span.alias!r}: rows of shape {tuple(rows.shape)} do not fit a range of "
            f"{span.token_range.length} and a model width of {model.config.hidden_size}"
        )
    embedding = ExLlamaV2MMEmbedding.__new__(ExLlamaV2MMEmbedding)
    embedding.model = model  # exllamav2 reads its config (Qwen2-VL's merge size for M-RoPE)
    embedding.embeddings = rows
    # Only exllamav2's own tokenizer reads the alias; vlmq encodes prompts itself.
    embedding.text_alias = span.alias
    grid = layout.grid
    # Read by M-RoPE (Qwen2-VL) only: frames, height and width in patches before merging.
    embedding.thw_grid = None if grid is None else (grid.frames, grid.height, grid.width)
    embedding.pre_tokens = layout.num_pre_tokens
    embedding.post_tokens = layout.num_post_tokens
    embedding.metadata = {}
    embedding.length = span.token_range.length
    embedding.first_index = span.token_range.first
    return embedding


class EmbeddingCache(BoundedLru[TokenRange, Any]):
    """Placed embeddings by token range, least recently used first out, bounded in bytes.

    A range names one content (the allocator's invariant), so a repeated image reuses the
    object and its IDs, and so its prefix-cache pages. Only the engine's thread uses it.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, size_of=_size_in_bytes)


def request_embeddings(
    spans: Sequence[Span],
    features: Sequence[torch.Tensor],
    model: Any,
    embed_tokens: EmbedTokens,
    cache: EmbeddingCache,
) -> list[Any]:
    """One placed embedding per distinct token range of a request, reused from `cache`."""
    hidden = model.config.hidden_size
    for span, image_rows in zip(spans, features, strict=True):
        # Checked on a cache hit too, so a malformed request fails whatever ran before it.
        if image_rows.shape[-1] != hidden:
            raise InvalidRequestError(
                f"span {span.alias!r}: features are {image_rows.shape[-1]} wide, the model {hidden}"
            )
    embeddings: dict[TokenRange, Any] = {}
    for span, image_rows in zip(spans, features, strict=True):
        if span.token_range in embeddings:
            continue
        embedding = cache.get(span.token_range)
        if embedding is None:
            rows = assemble_span_rows(span, image_rows, embed_tokens)
            embedding = place_embedding(model, span, rows)
            cache.put(span.token_range, embedding)
        embeddings[span.token_range] = embedding
    return list(embeddings.values())


def _size_in_bytes(embedding: Any) -> int:
    rows: torch.Tensor = embedding.embeddings
    return rows.element_size() * rows.numel()
