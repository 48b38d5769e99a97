"""One request while it is being generated: its tokens, its text, and whether it is done."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from concurrent.futures import Future

from worker.errors import InvalidRequestError
from worker.generation import FinishReason, GenerationRequest, GenerationResult, Timings
from worker.sampling import Sampler


class Sequence:
    def __init__(
        self,
        request: GenerationRequest,
        future: Future[GenerationResult],
        decode: Callable[[list[int]], str],
    ) -> None:
        self.request = request
        self.future = future
        self.sampler = Sampler(request.sampling)
        self.stop_strings = _checked_stop_strings(request)
        self.completion_ids: list[int] = []
        self.text = ""
        self.finish_reason: FinishReason | None = None
        self.num_prompt_tokens = 0
        self._decode = decode
        self.submitted_at = time.perf_counter()
        self.prefill_started_at = self.submitted_at
        self.decode_started_at = self.submitted_at

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def last_token(self) -> int:
        return self.completion_ids[-1]

    def append(self, token_id: int, eos_token_ids: Collection[int]) -> None:
        """Take one sampled token and decide whether the sequence is finished."""
        if token_id in eos_token_ids:
            self.finish_reason = FinishReason.EOS
            return
        self.completion_ids.append(token_id)
        self.text = self._decode(self.completion_ids)
        stop_at = first_stop_string(self.text, self.stop_strings)
        if stop_at is not None:
            self.text = self.text[:stop_at]
            self.finish_reason = FinishReason.STOP_STRING
        elif len(self.completion_ids) >= self.request.sampling.max_new_tokens:
            self.finish_reason = FinishReason.LENGTH

    def result(self) -> GenerationResult:
        assert self.finish_reason is not None
        now = time.perf_counter()
        return GenerationResult(
            request_id=self.request.request_id,
            text=self.text,
            finish_reason=self.finish_reason,
            num_prompt_tokens=self.num_prompt_tokens,
            num_completion_tokens=len(self.completion_ids),
            completion_ids=tuple(self.completion_ids),
            timings=Timings(
                queue_s=self.prefill_started_at - self.submitted_at,
                prefill_s=self.decode_started_at - self.prefill_started_at,
                decode_s=now - self.decode_started_at,
            ),
        )


def first_stop_string(text: str, stop_strings: tuple[str, ...]) -> int | None:
    """Where the earliest stop string begins in `text`, or None."""
    found = [index for s in stop_strings if (index := text.find(s)) >= 0]
    return min(found) if found else None


def _checked_stop_strings(request: GenerationRequest) -> tuple[str, ...]:
    # SamplingParams checks them, but an unpickled one skips its __post_init__; an empty
    # string would end every text at once and a non-str would raise on every token.
    stop_strings = request.sampling.stop_strings
    if not isinstance(stop_strings, tuple) or any(
        not isinstance(s, str) or not s for s in stop_strings
    ):
        raise InvalidRequestError(
            f"request {request.request_id}: stop_strings must be a tuple of non-empty str"
        )
    return stop_strings
