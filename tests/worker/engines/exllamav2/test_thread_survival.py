"""The exllamav2 engine's thread survives anything one request does, and says when it dies.

exllamav2's generator is replaced at the engine's declared seam (`GeneratorSeam`) by
`ScriptedGenerator`, or by a subclass of it that misbehaves the way the test needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.exllamav2_cpu import ScriptedGenerator
from worker.engines.exllamav2.language import ExLlamaV2Language
from worker.engines.exllamav2.model import ExLlamaV2Settings, ExLlamaV2Vlm, load_exllamav2_vlm
from worker.errors import EngineDiedError, InvalidRequestError
from worker.generation import FinishReason, GenerationRequest
from worker.sampling_params import SamplingParams
from worker.span import Span
from worker.tiny.model import write_tiny_model
from worker.token_range import RESERVED_ID_BASE, TokenRange

SETTINGS = ExLlamaV2Settings(cache_tokens=4096, max_batch_size=4)
TIMEOUT_S = 30


class Fatal(BaseException):
    """Not an Exception: what a bug or an interpreter-level interrupt looks like to a thread."""


@pytest.fixture(scope="module")
def exl(tmp_path_factory: pytest.TempPathFactory) -> ExLlamaV2Vlm:
    model_dir = Path(tmp_path_factory.mktemp("exllamav2-survival")) / "pixtral"
    write_tiny_model(model_dir, "pixtral")
    return load_exllamav2_vlm(model_dir, SETTINGS, load_weights=False)


def ask(request_id: str, max_new_tokens: int = 3, **fields: Any) -> GenerationRequest:
    fields.setdefault("sampling", SamplingParams(max_new_tokens=max_new_tokens))
    return GenerationRequest(request_id, f"question {request_id}", (), (), **fields)


def completions(*request_ids: str) -> dict[str, list[int]]:
    return {request_id: [101 + i, 202, 303] for i, request_id in enumerate(request_ids)}


def test_a_request_whose_ranges_cannot_be_read_fails_alone(exl: ExLlamaV2Vlm) -> None:
    # An epoch that is no int passed every check once and then raised in the epoch gate, on
    # the engine's thread, outside its try blocks.
    span = Span("<img>", TokenRange(None, RESERVED_ID_BASE, 4))  # type: ignore[arg-type]
    bad = GenerationRequest("bad", "<img> what?", (span,), (torch.zeros(4, exl.hidden_size),))
    generator = ScriptedGenerator(exl.tokenizer, completions("good", "later"))
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    good_future, bad_future = engine.submit(ask("good")), engine.submit(bad)
    assert isinstance(bad_future.exception(timeout=TIMEOUT_S), TypeError)
    assert good_future.result(timeout=TIMEOUT_S).finish_reason is FinishReason.LENGTH
    assert engine.submit(ask("later")).result(timeout=TIMEOUT_S).num_completion_tokens == 3
    assert engine.failure is None
    engine.close()


class StrayResults(ScriptedGenerator):
    """Also returns, on its first iterate(), results that name no job of this engine."""

    def iterate(self) -> list[dict[str, Any]]:
        results = super().iterate()
        if not hasattr(self, "strayed"):
            self.strayed = True
            results[:0] = [{"stage": "streaming"}, {"stage": "streaming", "serial": 10**6}]
        return results


def test_results_that_name_no_job_are_skipped(exl: ExLlamaV2Vlm) -> None:
    generator = StrayResults(exl.tokenizer, completions("a", "b"))
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    futures = [engine.submit(ask("a")), engine.submit(ask("b"))]
    assert [f.result(timeout=TIMEOUT_S).num_completion_tokens for f in futures] == [3, 3]
    assert engine.failure is None
    engine.close()


def test_stop_strings_that_skipped_validation_fail_their_request(exl: ExLlamaV2Vlm) -> None:
    # What an unpickled SamplingParams may carry: its __post_init__ never ran. exllamav2 would
    # take the int as a stop token ID and stop there.
    sampling = SamplingParams(max_new_tokens=3)
    object.__setattr__(sampling, "stop_strings", (202,))
    generator = ScriptedGenerator(exl.tokenizer, completions("bad", "good"))
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    bad, good = engine.submit(ask("bad", sampling=sampling)), engine.submit(ask("good"))
    assert isinstance(bad.exception(timeout=TIMEOUT_S), InvalidRequestError)
    assert good.result(timeout=TIMEOUT_S).num_completion_tokens == 3
    engine.close()


class Dying(ScriptedGenerator):
    """Raises a BaseException from the named method, which no request's try block catches."""

    def __init__(self, tokenizer: Any, completions: dict[str, list[int]], where: str) -> None:
        super().__init__(tokenizer, completions)
        self.where = where

    def enqueue(self, job: Any) -> int:
        if self.where == "enqueue":
            raise Fatal("enqueue")
        return super().enqueue(job)

    def iterate(self) -> list[dict[str, Any]]:
        if self.where == "iterate":
            raise Fatal("iterate")
        return super().iterate()


@pytest.mark.parametrize("where", ["enqueue", "iterate"])
def test_a_dying_thread_fails_every_request_typed_and_says_why(
    exl: ExLlamaV2Vlm, where: str
) -> None:
    engine = ExLlamaV2Language(exl, SETTINGS, generator=Dying(exl.tokenizer, {}, where))
    futures = [engine.submit(ask(f"r{i}")) for i in range(3)]
    for future in futures:
        assert isinstance(future.exception(timeout=TIMEOUT_S), EngineDiedError)
    assert isinstance(engine.failure, Fatal)
    late = engine.submit(ask("late"))
    assert late.done() and isinstance(late.exception(), EngineDiedError)
    engine.close()
