"""Aborting requests in the exllamav2 engine, on the CPU: a running one is cancelled in the
generator (`ExLlamaV2DynamicGenerator.cancel`, which frees its pages), a queued one never
reaches it, and the others run on unchanged.

exllamav2's generator is replaced at the engine's declared seam (`GeneratorSeam`) by
`ScriptedGenerator`, here one whose `iterate()` waits for the test's permission, so the test
knows where a request is when it aborts it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from tests.support.exllamav2_cpu import ScriptedGenerator
from tests.support.waiting import wait_for
from worker.engines.exllamav2.language import ExLlamaV2Language
from worker.engines.exllamav2.model import ExLlamaV2Settings, ExLlamaV2Vlm, load_exllamav2_vlm
from worker.engines.seam import EngineLoad
from worker.errors import JobCancelledError
from worker.generation import GenerationRequest, GenerationResult
from worker.sampling_params import SamplingParams
from worker.tiny.model import write_tiny_model

SETTINGS = ExLlamaV2Settings(cache_tokens=4096, max_batch_size=4)
TIMEOUT_S = 30


@pytest.fixture(scope="module")
def exl(tmp_path_factory: pytest.TempPathFactory) -> ExLlamaV2Vlm:
    model_dir = Path(tmp_path_factory.mktemp("exllamav2-abort")) / "pixtral"
    write_tiny_model(model_dir, "pixtral")
    return load_exllamav2_vlm(model_dir, SETTINGS, load_weights=False)


class SteppedGenerator(ScriptedGenerator):
    """Each `iterate()` waits for a permit (`allow`); `num_iterations` counts those done."""

    def __init__(self, tokenizer: Any, completions: dict[str, list[int]], **options: Any) -> None:
        super().__init__(tokenizer, completions, **options)
        self.permits = threading.Semaphore(0)
        self.num_iterations = 0
        self.is_parked = False  # the engine's thread waits for a permit in iterate()

    def iterate(self) -> list[dict[str, Any]]:
        self.is_parked = True
        self.permits.acquire()
        self.is_parked = False
        results = super().iterate()
        self.num_iterations += 1
        return results

    def allow(self, num_iterations: int) -> None:
        self.permits.release(num_iterations)

    def step_until(self, condition: Any, what: str) -> None:
        """Let iterations run one at a time until `condition()` holds after one."""
        while not condition():
            self.step(what)

    def step(self, what: str) -> None:
        """Let one iteration run; return when it is done."""
        target = self.num_iterations + 1
        self.allow(1)
        wait_for(lambda: self.num_iterations >= target, f"an iteration, until {what}")

    def active_ids(self) -> list[str]:
        return [job.identifier for job in self.active_jobs]


def ask(request_id: str, max_new_tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(
        request_id, f"question {request_id}", (), (), SamplingParams(max_new_tokens)
    )


COMPLETIONS = {name: [101 + i, 202, 303, 404] for i, name in enumerate(["a", "b", "long"])}


def reference(exl: ExLlamaV2Vlm, requests: list[GenerationRequest]) -> list[GenerationResult]:
    generator = ScriptedGenerator(exl.tokenizer, COMPLETIONS)
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    try:
        return [f.result(timeout=TIMEOUT_S) for f in [engine.submit(r) for r in requests]]
    finally:
        engine.close()


def test_a_running_request_is_cancelled_in_the_generator_and_the_others_go_on(
    exl: ExLlamaV2Vlm,
) -> None:
    expected = reference(exl, [ask("a"), ask("b")])
    generator = SteppedGenerator(exl.tokenizer, COMPLETIONS, max_batch_size=3)
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    try:
        futures = [engine.submit(ask("a")), engine.submit(ask("b"))]
        doomed = engine.submit(ask("long", max_new_tokens=1000))
        generator.step_until(lambda: "long" in generator.active_ids(), "it runs")
        engine.abort(doomed)
        generator.allow(1)  # the iteration it may be waiting in; the abort comes after it
        assert isinstance(doomed.exception(timeout=TIMEOUT_S), JobCancelledError)
        assert "cancel long" in generator.events
        assert "long" not in generator.active_ids()
        assert engine.num_aborted == 1
        generator.allow(1000)
        results = [f.result(timeout=TIMEOUT_S) for f in futures]
    finally:
        generator.allow(1000)
        engine.close()
    assert [r.completion_ids for r in results] == [r.completion_ids for r in expected]
    assert [r.text for r in results] == [r.text for r in expected]
    assert "finish long" not in generator.events


def test_a_request_waiting_in_the_generator_queue_is_taken_out_of_it(exl: ExLlamaV2Vlm) -> None:
    (expected,) = reference(exl, [ask("a", max_new_tokens=20)])
    generator = SteppedGenerator(exl.tokenizer, COMPLETIONS, max_batch_size=1)
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    try:
        running = engine.submit(ask("a", max_new_tokens=20))
        generator.step_until(lambda: generator.active_ids() == ["a"], "the first runs")
        queued = engine.submit(ask("b"))
        # One slot in the batch: the second job waits in the generator's own queue.
        generator.step_until(lambda: len(generator.pending_jobs) == 1, "the second is queued")
        # In exllamav2's batch and in its queue: what the generator actor exports, as vLLM does.
        assert engine.load == EngineLoad(running=1, waiting=1)
        engine.abort(queued)
        generator.allow(1)
        assert isinstance(queued.exception(timeout=TIMEOUT_S), JobCancelledError)
        assert "cancel b" in generator.events and not generator.pending_jobs
        generator.allow(1000)
        result = running.result(timeout=TIMEOUT_S)
        assert engine.load == EngineLoad(0, 0)
    finally:
        generator.allow(1000)
        engine.close()
    assert "start b" not in generator.events
    assert result.completion_ids == expected.completion_ids


def test_a_request_not_yet_in_the_generator_never_reaches_it(exl: ExLlamaV2Vlm) -> None:
    generator = SteppedGenerator(exl.tokenizer, COMPLETIONS)
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    try:
        running = engine.submit(ask("a"))
        generator.step_until(lambda: generator.active_ids() == ["a"], "the first runs")
        wait_for(lambda: generator.is_parked, "the engine's thread waits in iterate()")
        # Until it is let go, the second stays in the engine's hands.
        late = engine.submit(ask("b"))
        engine.abort(late)
        generator.allow(1)
        assert isinstance(late.exception(timeout=TIMEOUT_S), JobCancelledError)
        generator.allow(1000)
        assert running.result(timeout=TIMEOUT_S).request_id == "a"
    finally:
        generator.allow(1000)
        engine.close()
    assert [job.identifier for job in generator.jobs] == ["a"]  # never enqueued
    assert not any(event.startswith("cancel") for event in generator.events)
    assert engine.num_aborted == 1


def test_aborting_a_finished_or_unknown_request_does_nothing(exl: ExLlamaV2Vlm) -> None:
    generator = ScriptedGenerator(exl.tokenizer, COMPLETIONS)
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    try:
        done = engine.submit(ask("a"))
        result = done.result(timeout=TIMEOUT_S)
        engine.abort(done)
        engine.abort(Future())  # never this engine's
        after = engine.submit(ask("b")).result(timeout=TIMEOUT_S)
    finally:
        engine.close()
    assert done.result() is result and after.num_completion_tokens == 4
    assert not any(event.startswith("cancel") for event in generator.events)
    assert engine.num_aborted == 0
