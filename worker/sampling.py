"""The per-sequence sampler that turns logits into the next token, as `SamplingParams` say."""

from __future__ import annotations

import math

import torch

from worker.sampling_params import SamplingParams


class Sampler:
    """Draws one sequence's tokens; its own generator makes a seeded request reproducible.

    Safe for any `SamplingParams` that passed validation and any logits: NaN is never drawn,
    +inf wins, and the best token always keeps a non-zero probability, so the draw never sees
    an empty distribution. Logits with no finite or +inf value give token 0.
    """

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator = torch.Generator()
        if params.seed is not None:
            self._generator.manual_seed(params.seed)
        else:
            self._generator.seed()

    def next_token(self, logits: torch.Tensor) -> int:
        # logits: [vocab]
        if logits.dim() != 1 or logits.numel() == 0:
            raise ValueError(f"expected logits of shape [vocab], got {tuple(logits.shape)}")
        # float64: logits / temperature cannot overflow (float32 logits over 0.01 stay < 1e41).
        scores = torch.nan_to_num(logits.detach().to(torch.float64), nan=-math.inf)
        best = float(scores.max())
        if best == math.inf:
            # Infinitely likely tokens: only they may be drawn, each as likely.
            scores = torch.full_like(scores, -math.inf).masked_fill(scores == math.inf, 0.0)
            best = 0.0
        if self.params.is_greedy or best == -math.inf:
            return int(torch.argmax(scores).item())
        # Shifted so the best score is 0: its weight is exp(0) = 1 whatever the temperature.
        scores = (scores - best) / self.params.temperature
        if self.params.top_k:
            kth_best = torch.topk(scores, min(self.params.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth_best, -math.inf)
        probs = torch.exp(scores)
        probs = probs / probs.sum()
        if self.params.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p; the best token's mass before
            # it is 0 < top_p, so it is always kept.
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self.params.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._generator).item())
