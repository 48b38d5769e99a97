"""The language side of the transformers engine: injected prefill, batched decode, KV caches.

Each sequence keeps its own KV cache. A decode step left-pads the caches of all running
sequences to one length, runs them as one batch with an attention mask over the padding, and
keeps each sequence's new cache without the padding.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from worker.encoding.prompt_encoder import PromptEncoder
from worker.engines.transformers.dynamic_batcher import DynamicBatcher
from worker.engines.transformers.embedding_injection import inject, placeholder_ids
from worker.engines.transformers.model import TransformersVlm
from worker.engines.transformers.sequence import Sequence
from worker.errors import PromptTooLongError
from worker.images.vlm_family import VlmFamily
from worker.span import Span


@dataclass
class _KvState:
    keys: list[torch.Tensor]  # per layer: [1, kv_heads, length, head_dim]
    values: list[torch.Tensor]
    length: int  # tokens in the cache
    rope_delta: int  # Qwen2-VL: the next token's position is length + rope_delta; else 0


class TransformersStepModel:
    def __init__(self, vlm: TransformersVlm, max_batch_size: int = 8) -> None:
        self.vlm = vlm
        self.encoder = PromptEncoder(vlm.tokenizer)
        self._max_batch_size = max_batch_size
        self._states: dict[int, _KvState] = {}

    @property
    def eos_token_ids(self) -> Collection[int]:
        return self.vlm.eos_token_ids

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    def decode_text(self, ids: list[int]) -> str:
        text: str = self.vlm.tokenizer.backend.decode(ids, skip_special_tokens=True)
        return text

    def encode(self, sequence: Sequence) -> list[int]:
        request = sequence.request
        ids = self.encoder.encode(request.prompt, request.spans, add_bos=request.add_bos)
        needed = len(ids) + request.sampling.max_new_tokens
        if needed > self.vlm.max_context:
            raise PromptTooLongError(
                f"request {request.request_id}: {len(ids)} prompt tokens + "
                f"{request.sampling.max_new_tokens} new tokens exceed the context of "
                f"{self.vlm.max_context}"
            )
        return ids

    def prompt_logits(self, sequence: Sequence) -> tuple[torch.Tensor, _KvState]:
        """Logits at every prompt position, [prompt, vocab], and the cache the prompt left."""
        request = sequence.request
        ids = self.encode(sequence)
        id_tensor = torch.tensor(ids, dtype=torch.long)
        embeds = inject(
            id_tensor, request.spans, request.features, self.vlm.image_token_id,
            self.vlm.embed_tokens,
        )
        position_ids, rope_delta = self._prompt_positions(ids, request.spans)
        cache = self.vlm.new_cache()
        with torch.inference_mode():
            output = self.vlm.forward(cache, inputs_embeds=embeds[None], position_ids=position_ids)
        state = _KvState(
            keys=[layer.keys for layer in cache.layers],
            values=[layer.values for layer in cache.layers],
            length=len(ids),
            rope_delta=rope_delta,
        )
        return self._in_vocabulary(output.logits[0]), state

    def prefill(self, sequence: Sequence) -> torch.Tensor:
        logits, state = self.prompt_logits(sequence)
        self._states[id(sequence)] = state
        sequence.num_prompt_tokens = state.length
        return logits[-1]

    def decode(self, sequences: list[Sequence]) -> torch.Tensor:
        states = [self._states[id(s)] for s in sequences]
        longest = max(state.length for state in states)
        num_layers = len(states[0].keys)
        cache = self.vlm.new_cache(
            [
                (
                    torch.cat([_left_pad(s.keys[layer], longest) for s in states]),
                    torch.cat([_left_pad(s.values[layer], longest) for s in states]),
                )
                for layer in range(num_layers)
            ]
        )
        # attention_mask: [batch, longest + 1], zero over each sequence's padding.
        attention_mask = torch.zeros(len(states), longest + 1, dtype=torch.long)
        for row, state in enumerate(states):
            attention_mask[row, longest - state.length :] = 1
        last_tokens = torch.tensor([[s.last_token] for s in sequences], dtype=torch.long)
        positions = torch.tensor([[s.length + s.rope_delta] for s in states], dtype=torch.long)
        if self.vlm.family is VlmFamily.QWEN2_VL:
            positions = positions[None].expand(3, -1, -1)  # [3, batch, 1]: t, h, w alike
        with torch.inference_mode():
            output = self.vlm.forward(
                cache,
                inputs_embeds=self.vlm.embed_tokens(last_tokens),
                attention_mask=attention_mask,
                position_ids=positions,
            )
        for row, state in enumerate(states):
            start = longest - state.length
            state.keys = [layer.keys[row : row + 1, :, start:] for layer in cache.layers]
            state.values = [layer.values[row : row + 1, :, start:] for layer in cache.layers]
            state.length += 1
        return self._in_vocabulary(output.logits[:, -1])

    def release(self, sequence: Sequence) -> None:
        self._states.pop(id(sequence), None)

    def _prompt_positions(
        self, ids: list[int], spans: tuple[Span, ...]
    ) -> tuple[torch.Tensor, int]:
        if self.vlm.family is not VlmFamily.QWEN2_VL or not spans:
            return torch.arange(len(ids))[None], 0
        image_token = self.vlm.image_token_id
        token_ids = torch.tensor(placeholder_ids(ids, spans, image_token))
        # One grid per image occurrence, in prompt order: the same image twice is two images.
        grid_at = {span.token_range.first: span.row_layout.grid for span in spans}
        grids = [[g.frames, g.height, g.width] for t in ids if (g := grid_at.get(t)) is not None]
        position_ids, deltas = self.vlm.model.model.get_rope_index(
            token_ids[None],
            mm_token_type_ids=(token_ids == image_token).int()[None],
            image_grid_thw=torch.tensor(grids),
        )
        return position_ids, int(deltas[0])

    def _in_vocabulary(self, logits: torch.Tensor) -> torch.Tensor:
        # The embedding table is padded past the tokenizer; those rows must never be sampled.
        logits = logits.float().clone()
        logits[..., self.vlm.vocab_size :] = -torch.inf
        return logits


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    # tensor: [1, heads, seq, dim] -> [1, heads, length, dim]
    missing = length - tensor.shape[2]
    if not missing:
        return tensor
    padding = tensor.new_zeros(tensor.shape[0], tensor.shape[1], missing, tensor.shape[3])
    return torch.cat([padding, tensor], dim=2)


def start_transformers_engine(vlm: TransformersVlm, max_batch_size: int = 8) -> DynamicBatcher:
    """A running language engine: submit requests, get futures."""
    return DynamicBatcher(TransformersStepModel(vlm, max_batch_size), name=f"vlmq-{vlm.family}")
