"""The transformers engine's thread survives anything one request does, and says when it dies.

The model is the real tiny one; where a request must break in a way validation no longer lets
through, a `StepModel` double (the batcher's declared seam) wraps the real step model and
breaks only the requests whose ID starts with "hostile".
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future

import pytest
import torch

from tests.support.step_models import WrappedStepModel
from tests.worker.engines.transformers.test_engine import requests, run_all
from worker.engines.transformers.dynamic_batcher import DynamicBatcher
from worker.engines.transformers.language import TransformersStepModel, start_transformers_engine
from worker.engines.transformers.model import TransformersVlm
from worker.engines.transformers.sequence import Sequence
from worker.errors import EngineDiedError, InvalidRequestError
from worker.generation import FinishReason, GenerationRequest, GenerationResult
from worker.sampling_params import (
    MAX_SEED,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MIN_TEMPERATURE,
    MIN_TOP_P,
    SamplingParams,
)

TIMEOUT_S = 120


class Fatal(BaseException):
    """Not an Exception: what a bug or an interpreter-level interrupt looks like to a thread."""


class HostileStepModel(WrappedStepModel):
    """The real step model; `how` says what it does to requests whose ID starts with "hostile".

    "no-logits": prefill gives an empty logits row, so sampling raises (on prefill's path).
    "release": releasing the finished sequence raises (on a decode step's path).
    "decode-fails-once": the first decode step raises, for the whole batch.
    "fatal-prefill" / "fatal-decode": a BaseException escapes the step, killing the thread.
    """

    def __init__(self, inner: TransformersStepModel, how: str) -> None:
        super().__init__(inner)
        self.how = how
        self.num_decodes = 0

    def prefill(self, sequence: Sequence) -> torch.Tensor:
        if self.how == "fatal-prefill":
            raise Fatal("prefill")
        logits = self.inner.prefill(sequence)
        if self.how == "no-logits" and _hostile(sequence):
            return logits[:0]
        return logits

    def decode(self, sequences: list[Sequence]) -> torch.Tensor:
        self.num_decodes += 1
        if self.how == "fatal-decode":
            raise Fatal("decode")
        if self.how == "decode-fails-once" and self.num_decodes == 1:
            raise RuntimeError("decode failed")
        return self.inner.decode(sequences)

    def release(self, sequence: Sequence) -> None:
        self.inner.release(sequence)
        if self.how == "release" and _hostile(sequence) and sequence.is_finished:
            raise RuntimeError("release failed")


def _hostile(sequence: Sequence) -> bool:
    return sequence.request.request_id.startswith("hostile")


def renamed(request: GenerationRequest, request_id: str) -> GenerationRequest:
    return dataclasses.replace(request, request_id=request_id)


@pytest.mark.parametrize(("how", "error"), [("no-logits", ValueError), ("release", RuntimeError)])
def test_a_request_that_raises_in_its_own_processing_fails_alone(
    vlm: TransformersVlm, how: str, error: type[Exception]
) -> None:
    good, hostile, later = requests(vlm, 3)
    hostile = renamed(hostile, "hostile-1")
    plain = start_transformers_engine(vlm, max_batch_size=4)
    expected = run_all(plain, [good, later])
    plain.close()

    engine = DynamicBatcher(HostileStepModel(TransformersStepModel(vlm, 4), how))
    good_future, hostile_future = engine.submit(good), engine.submit(hostile)
    with pytest.raises(error):
        hostile_future.result(timeout=TIMEOUT_S)
    assert good_future.result(timeout=TIMEOUT_S).completion_ids == expected[0].completion_ids
    after = engine.submit(later).result(timeout=TIMEOUT_S)
    assert after.completion_ids == expected[1].completion_ids
    assert engine.failure is None
    engine.close()


def test_stop_strings_that_skipped_validation_fail_their_request_at_submit(
    vlm: TransformersVlm,
) -> None:
    good, bad = requests(vlm, 2)
    # What an unpickled SamplingParams may carry: its __post_init__ never ran.
    sampling = SamplingParams(max_new_tokens=4)
    object.__setattr__(sampling, "stop_strings", (5,))
    bad = dataclasses.replace(bad, sampling=sampling)
    engine = start_transformers_engine(vlm)
    bad_future = engine.submit(bad)
    assert bad_future.done(), "refused before it reaches the engine thread"
    assert isinstance(bad_future.exception(), InvalidRequestError)
    assert engine.submit(good).result(timeout=TIMEOUT_S).request_id == good.request_id
    engine.close()


def test_a_failed_decode_step_fails_its_batch_and_the_engine_goes_on(
    vlm: TransformersVlm,
) -> None:
    first, second, later = requests(vlm, 3)
    model = HostileStepModel(TransformersStepModel(vlm, 4), "decode-fails-once")
    engine = DynamicBatcher(model)
    futures = [engine.submit(first), engine.submit(second)]
    outcomes = [f.exception(timeout=TIMEOUT_S) for f in futures]
    # The first decode step held the first request; the second was in it or came after.
    assert isinstance(outcomes[0], RuntimeError)
    assert outcomes[1] is None or isinstance(outcomes[1], RuntimeError)
    assert engine.submit(later).result(timeout=TIMEOUT_S).request_id == later.request_id
    assert engine.failure is None
    engine.close()


@pytest.mark.parametrize("how", ["fatal-prefill", "fatal-decode"])
def test_a_dying_thread_fails_every_request_typed_and_says_why(
    vlm: TransformersVlm, how: str
) -> None:
    batch = requests(vlm, 3)
    # One at a time: while the first is in hand, the others wait in the queue.
    engine = DynamicBatcher(HostileStepModel(TransformersStepModel(vlm, 1), how))
    futures = [engine.submit(request) for request in batch]
    for future in futures:
        assert isinstance(future.exception(timeout=TIMEOUT_S), EngineDiedError)
    assert isinstance(engine.failure, Fatal)
    late: Future[GenerationResult] = engine.submit(batch[0])
    assert late.done() and isinstance(late.exception(), EngineDiedError)
    engine.close()


def test_the_most_extreme_accepted_sampling_runs_to_the_end(vlm: TransformersVlm) -> None:
    extremes = [
        {"temperature": MIN_TEMPERATURE, "top_p": MIN_TOP_P},
        {"temperature": MAX_TEMPERATURE, "top_k": MAX_TOP_K, "seed": MAX_SEED},
        {"temperature": MAX_TEMPERATURE, "top_p": MIN_TOP_P, "seed": 0},
        {"stop_strings": tuple(chr(97 + i) * MAX_STOP_STRING_CHARS
                               for i in range(MAX_STOP_STRINGS))},
    ]
    batch = [
        dataclasses.replace(request, sampling=SamplingParams(max_new_tokens=5, **options))  # type: ignore[arg-type]
        for request, options in zip(requests(vlm, len(extremes)), extremes, strict=True)
    ]
    engine = start_transformers_engine(vlm)
    results = run_all(engine, batch)
    engine.close()
    for result in results:
        assert result.finish_reason in (FinishReason.LENGTH, FinishReason.EOS)
        assert all(0 <= t < vlm.vocab_size for t in result.completion_ids)
