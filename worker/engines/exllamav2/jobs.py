"""Requests into exllamav2 jobs, and exllamav2's result dicts back into `GenerationResult`s.

This is the edge: exllamav2's sampler settings, jobs and untyped result dicts do not travel
further than this module and the engine that drives them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from worker.errors import InvalidRequestError
from worker.generation import FinishReason, GenerationRequest, GenerationResult, Timings
from worker.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class FinishedJob:
    """A finished request and what exllamav2's prefix cache saved it."""

    result: GenerationResult  # its num_cached_tokens: prompt tokens the cache held
    num_cached_pages: int  # whole cache pages among them

    @property
    def num_cached_tokens(self) -> int:
        return self.result.num_cached_tokens or 0


def sampler_settings(params: SamplingParams) -> Any:
    """`ExLlamaV2Sampler.Settings` that sample as `worker.sampling.Sampler` does."""
    from exllamav2.generator import ExLlamaV2Sampler

    if params.is_greedy:
        return ExLlamaV2Sampler.Settings.greedy()
    # exllamav2 switches to greedy below temperature 0.01 and reads top_k 0 and top_p 1 as off,
    # as vlmq does; its other filters default to off, its repetition penalty does not.
    # SamplingParams bounds these to what its float32 sampler survives (worker/sampling.py).
    return ExLlamaV2Sampler.Settings(
        temperature=float(params.temperature),
        top_k=int(params.top_k),
        top_p=float(params.top_p),
        token_repetition_penalty=1.0,
    )


def stop_conditions(params: SamplingParams, eos_token_ids: Collection[int]) -> list[int | str]:
    # exllamav2 takes an int here as a stop token: a stop "string" that is no str (an unpickled
    # SamplingParams skips its checks) must fail its request, not stop at that token ID.
    strings = params.stop_strings
    if not isinstance(strings, tuple) or any(not isinstance(s, str) or not s for s in strings):
        raise InvalidRequestError("stop_strings must be a tuple of non-empty str")
    return [*sorted(eos_token_ids), *strings]


def make_job(
    request: GenerationRequest,
    prompt_ids: Sequence[int],
    embeddings: list[Any],
    eos_token_ids: Collection[int],
    *,
    return_logits: bool = False,
) -> Any:
    """An `ExLlamaV2DynamicJob` for one request whose prompt is already encoded."""
    from exllamav2.generator import ExLlamaV2DynamicJob

    sampling = request.sampling
    return ExLlamaV2DynamicJob(
        input_ids=torch.tensor([list(prompt_ids)], dtype=torch.long),
        max_new_tokens=sampling.max_new_tokens,
        gen_settings=sampler_settings(sampling),
        seed=sampling.seed,
        stop_conditions=stop_conditions(sampling, eos_token_ids),
        identifier=request.request_id,
        embeddings=embeddings,
        decode_special_tokens=False,
        return_logits=return_logits,
    )


class JobStream:
    """One job's results across `iterate()` calls, converted once it has finished."""

    def __init__(self, request: GenerationRequest, waited_s: float) -> None:
        self.request = request
        self.waited_s = waited_s  # from submit() until exllamav2's enqueue
        self.token_ids: list[int] = []

    def receive(self, result: Mapping[str, Any]) -> FinishedJob | None:
        """Take one result dict of this job; the finished job once it says eos."""
        if result["stage"] != "streaming":
            return None
        self.token_ids += _ids(result.get("token_ids"))
        if not result["eos"]:
            return None
        return self._finish(result)

    def _finish(self, result: Mapping[str, Any]) -> FinishedJob:
        reason = result["eos_reason"]
        text: str = result["full_completion"]
        completion_ids = list(self.token_ids)
        if reason == "stop_token":
            # exllamav2 keeps back what it held when the stop token came (the token itself,
            # text that might have begun a stop string); vlmq keeps all of it but the token.
            held = result.get("held", {})
            completion_ids += _ids(held.get("token_ids"))[:-1]
            text += held.get("text", "")
            finish_reason = FinishReason.EOS
        elif reason == "stop_string":
            finish_reason = FinishReason.STOP_STRING  # the text already ends before it
        elif reason == "max_new_tokens":
            finish_reason = FinishReason.LENGTH
            # exllamav2 checks the length before stop strings; vlmq ends before a stop string
            # whenever one appears, as the transformers engine does.
            stop_at = _first_stop_string(text, self.request.sampling.stop_strings)
            if stop_at is not None:
                text, finish_reason = text[:stop_at], FinishReason.STOP_STRING
        else:
            raise ValueError(f"exllamav2 ended request {self.request.request_id}: {reason!r}")
        return FinishedJob(
            result=GenerationResult(
                request_id=self.request.request_id,
                text=text,
                finish_reason=finish_reason,
                num_prompt_tokens=int(result["prompt_tokens"]),
                num_completion_tokens=len(completion_ids),
                completion_ids=tuple(completion_ids),
                timings=Timings(
                    queue_s=self.waited_s + float(result["time_enqueued"]),
                    prefill_s=float(result["time_prefill"]),
                    decode_s=float(result["time_generate"]),
                ),
                num_cached_tokens=int(result["cached_tokens"]),
            ),
            num_cached_pages=int(result["cached_pages"]),
        )


def _ids(token_ids: torch.Tensor | None) -> list[int]:
    # token_ids: [1, n]
    return [] if token_ids is None else [int(t) for t in token_ids.flatten().tolist()]


def _first_stop_string(text: str, stop_strings: Sequence[str]) -> int | None:
    found = [index for s in stop_strings if (index := text.find(s)) >= 0]
    return min(found) if found else None
