"""Sampling parameters and the per-sequence sampler that turns logits into the next token."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from worker.errors import InvalidRequestError

MAX_STOP_STRINGS = 16


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy: always the most likely token
    top_p: float = 1.0  # nucleus sampling; 1.0 keeps every token
    top_k: int = 0  # 0 keeps every token
    seed: int | None = None  # fixes the random draws of one request, whatever else runs
    stop_strings: tuple[str, ...] = ()  # generation ends before the first one that appears

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if len(self.stop_strings) > MAX_STOP_STRINGS or any(not s for s in self.stop_strings):
            problems.append(f"stop_strings: at most {MAX_STOP_STRINGS}, none empty")
        if problems:
            raise InvalidRequestError("; ".join(problems))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


class Sampler:
    """Draws one sequence's tokens; its own generator makes a seeded request reproducible."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator = torch.Generator()
        if params.seed is not None:
            self._generator.manual_seed(params.seed)
        else:
            self._generator.seed()

    def next_token(self, logits: torch.Tensor) -> int:
        # logits: [vocab]
        if self.params.is_greedy:
            return int(torch.argmax(logits).item())
        scores = logits.float() / self.params.temperature
        if self.params.top_k:
            kth_best = torch.topk(scores, min(self.params.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth_best, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        if self.params.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always the best token).
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self.params.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._generator).item())
