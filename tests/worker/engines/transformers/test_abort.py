"""Aborting requests in the transformers engine: queued ones are dropped, running ones leave the
batch at the next step boundary with their cache released, and the rest run on unchanged.

The model is the real tiny one. So that a test knows which step a request is in when it aborts
it, without timing, a `StepModel` double (the batcher's declared seam) wraps the real step
model and makes each decode step wait for the test's permission.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future

import pytest
import torch

from tests.support.step_models import WrappedStepModel
from tests.support.waiting import wait_for
from tests.worker.engines.transformers.test_engine import requests, run_all
from worker.engines.seam import EngineLoad
from worker.engines.transformers.dynamic_batcher import DynamicBatcher
from worker.engines.transformers.language import TransformersStepModel, start_transformers_engine
from worker.engines.transformers.model import TransformersVlm
from worker.engines.transformers.sequence import Sequence
from worker.errors import JobCancelledError
from worker.generation import GenerationRequest, GenerationResult
from worker.sampling_params import SamplingParams

TIMEOUT_S = 120


class SteppedModel(WrappedStepModel):
    """The real step model; each decode step waits for a permit (`allow`) and is recorded."""

    def __init__(self, inner: TransformersStepModel) -> None:
        super().__init__(inner)
        self.permits = threading.Semaphore(0)
        self.batches: list[list[str]] = []  # the request IDs of each decode step, in order
        self.prefilled: list[str] = []
        self.released: list[str] = []

    def prefill(self, sequence: Sequence) -> torch.Tensor:
        self.prefilled.append(sequence.request.request_id)
        return self.inner.prefill(sequence)

    def decode(self, sequences: list[Sequence]) -> torch.Tensor:
        self.permits.acquire()
        self.batches.append([s.request.request_id for s in sequences])
        return self.inner.decode(sequences)

    def release(self, sequence: Sequence) -> None:
        self.released.append(sequence.request.request_id)
        self.inner.release(sequence)

    def allow(self, num_steps: int) -> None:
        self.permits.release(num_steps)


def long_request(request: GenerationRequest, request_id: str) -> GenerationRequest:
    # Far more tokens than the test lets it decode: it can only end by being aborted.
    return dataclasses.replace(
        request, request_id=request_id, sampling=SamplingParams(max_new_tokens=2000)
    )


def reference(vlm: TransformersVlm, batch: list[GenerationRequest]) -> list[GenerationResult]:
    engine = start_transformers_engine(vlm, max_batch_size=4)
    try:
        return run_all(engine, batch)
    finally:
        engine.close()


def test_a_running_request_leaves_the_batch_and_the_others_run_on_unchanged(
    vlm: TransformersVlm,
) -> None:
    first, second, other = requests(vlm, 3)
    expected = reference(vlm, [first, second])
    model = SteppedModel(TransformersStepModel(vlm, 4))
    engine = DynamicBatcher(model)
    try:
        futures = [engine.submit(first), engine.submit(second)]
        doomed = engine.submit(long_request(other, "doomed"))
        # All three are submitted before the first step: after it, all three are in the batch.
        model.allow(1)
        wait_for(lambda: engine.num_running == 3, "three requests in the batch")
        engine.abort(doomed)
        model.allow(1)  # the step under way ends; at its boundary the aborted one leaves
        wait_for(lambda: engine.num_running == 2, "the aborted request out of the batch")
        assert isinstance(doomed.exception(timeout=TIMEOUT_S), JobCancelledError)
        assert "doomed" in model.released  # its KV cache is gone with it
        assert engine.num_aborted == 1
        model.allow(10_000)
        results = [f.result(timeout=TIMEOUT_S) for f in futures]
    finally:
        model.allow(10_000)
        engine.close()
    assert [r.completion_ids for r in results] == [r.completion_ids for r in expected]
    # It was in the batch until the boundary after its abort (the first or second step, as
    # the threads met), and in none of the steps the others went on with.
    steps_with_it = [i for i, batch in enumerate(model.batches) if "doomed" in batch]
    assert steps_with_it and steps_with_it[-1] <= 1, steps_with_it
    assert len(model.batches) > 2


def test_a_queued_request_is_dropped_before_its_prefill(vlm: TransformersVlm) -> None:
    running, queued = requests(vlm, 2)
    (expected,) = reference(vlm, [running])
    model = SteppedModel(TransformersStepModel(vlm, max_batch_size=1))
    engine = DynamicBatcher(model)
    try:
        running_future = engine.submit(running)
        wait_for(lambda: engine.num_running == 1, "the first request in the batch")
        # The batch is full (one slot): the second waits while the first's step waits too.
        queued_future = engine.submit(queued)
        # What its generator actor exports (vLLM's running and waiting): one each.
        wait_for(lambda: engine.load == EngineLoad(running=1, waiting=1), "one in, one waiting")
        engine.abort(queued_future)
        model.allow(1)
        assert isinstance(queued_future.exception(timeout=TIMEOUT_S), JobCancelledError)
        assert engine.num_aborted == 1
        model.allow(10_000)
        result = running_future.result(timeout=TIMEOUT_S)
        wait_for(lambda: engine.load == EngineLoad(0, 0), "the engine empty")
    finally:
        model.allow(10_000)
        engine.close()
    assert queued.request_id not in model.prefilled
    assert result.completion_ids == expected.completion_ids


def test_aborting_a_finished_or_unknown_request_does_nothing(vlm: TransformersVlm) -> None:
    done_request, later = requests(vlm, 2)
    engine = start_transformers_engine(vlm)
    try:
        done = engine.submit(done_request)
        result = done.result(timeout=TIMEOUT_S)
        engine.abort(done)
        engine.abort(Future())  # never this engine's
        after = engine.submit(later).result(timeout=TIMEOUT_S)
        assert done.result() is result
        assert after.request_id == later.request_id
        assert after.num_completion_tokens == later.sampling.max_new_tokens
        assert engine.num_aborted == 0
        assert engine.failure is None
    finally:
        engine.close()


@pytest.mark.parametrize("max_batch_size", [1, 4])
def test_aborted_requests_free_their_slots_for_new_ones(
    vlm: TransformersVlm, max_batch_size: int
) -> None:
    (other,) = requests(vlm, 1)
    (expected,) = reference(vlm, [other])
    engine = start_transformers_engine(vlm, max_batch_size=max_batch_size)
    try:
        doomed = [engine.submit(long_request(other, f"doomed-{i}")) for i in range(max_batch_size)]
        wait_for(lambda: engine.num_running == max_batch_size, "every slot taken")
        for future in doomed:
            engine.abort(future)
        # With the slots still taken by 2000-token requests, this one would wait for them.
        result = engine.submit(other).result(timeout=TIMEOUT_S)
        assert all(isinstance(f.exception(timeout=0), JobCancelledError) for f in doomed)
        assert engine.num_aborted == max_batch_size
    finally:
        engine.close()
    assert result.completion_ids == expected.completion_ids
