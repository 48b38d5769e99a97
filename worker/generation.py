"""What a language engine receives and what it gives back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from worker.errors import InvalidRequestError
from worker.sampling_params import SamplingParams
from worker.span import Span


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    prompt: str  # text with one alias per image occurrence
    spans: tuple[Span, ...]
    # Image rows of each span, in the order of `spans`: [num_image_rows, hidden], float16, CPU.
    features: tuple[torch.Tensor, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # BOS before the prompt: True or False, or None for what the model's own Hugging Face
    # tokenizer does (the reference processor's choice; Qwen2-VL's adds none).
    add_bos: bool | None = None

    def __post_init__(self) -> None:
        if self.add_bos is not None and not isinstance(self.add_bos, bool):
            raise InvalidRequestError(
                f"request {self.request_id}: add_bos must be True, False or None, "
                f"got {self.add_bos!r}"
            )
        if len(self.features) != len(self.spans):
            raise InvalidRequestError(
                f"request {self.request_id}: {len(self.spans)} spans but "
                f"{len(self.features)} feature tensors"
            )
        for span, rows in zip(self.spans, self.features, strict=True):
            expected = span.row_layout.num_image_rows
            if rows.dim() != 2 or rows.shape[0] != expected:
                raise InvalidRequestError(
                    f"request {self.request_id}: span {span.alias!r} needs {expected} image rows, "
                    f"features have shape {tuple(rows.shape)}"
                )


class FinishReason(enum.StrEnum):
    EOS = "eos"  # the model ended the text
    STOP_STRING = "stop_string"  # a stop string appeared; the text ends before it
    LENGTH = "length"  # max_new_tokens reached


@dataclass(frozen=True, slots=True)
class Timings:
    queue_s: float  # submitted until its prefill began
    prefill_s: float
    decode_s: float  # first decode step until finished, shared with the rest of the batch


@dataclass(frozen=True, slots=True)
class GenerationResult:
    request_id: str
    text: str
    finish_reason: FinishReason
    num_prompt_tokens: int
    num_completion_tokens: int
    completion_ids: tuple[int, ...]
    timings: Timings
    # Prompt tokens whose keys and values the engine's prefix cache already held (exllamav2's
    # paged cache); None for an engine that keeps no prefix cache (transformers).
    num_cached_tokens: int | None = None
