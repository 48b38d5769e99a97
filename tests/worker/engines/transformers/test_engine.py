"""The transformers engine end to end on tiny models: dynamic batching, sampling, stops, errors."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from tests.support.transformers_fixtures import pattern_image
from tests.support.waiting import wait_for
from worker.engines.transformers.dynamic_batcher import DynamicBatcher
from worker.engines.transformers.language import TransformersStepModel, start_transformers_engine
from worker.engines.transformers.model import TransformersVlm
from worker.engines.transformers.vision import TransformersVision
from worker.errors import (
    AliasWithoutSpanError,
    EngineClosedError,
    JobError,
    PromptTooLongError,
)
from worker.generation import FinishReason, GenerationRequest, GenerationResult
from worker.sampling_params import SamplingParams
from worker.span import Span
from worker.token_range import RESERVED_ID_BASE, TokenRange

IMAGES = [pattern_image(40 + 9 * i, 30 + 5 * i, seed=i + 1) for i in range(3)]


def requests(vlm: TransformersVlm, count: int, **sampling: object) -> list[GenerationRequest]:
    """Requests with one or two of three shared images and different lengths."""
    vision = TransformersVision(vlm)
    features = [vision.embed(image) for image in IMAGES]
    spans = []
    first = RESERVED_ID_BASE
    for i, f in enumerate(features):
        spans.append(Span(f"<img{i}>", TokenRange(1, first, f.layout.num_rows), f.layout))
        first += f.layout.num_rows
    made = []
    for i in range(count):
        chosen = [i % 3] if i % 2 else [i % 3, (i + 1) % 3]
        prompt = f"Question {i}: " + " and ".join(spans[c].alias for c in chosen) + "?"
        options = {"max_new_tokens": 4 + (i * 5) % 13, **sampling}
        made.append(
            GenerationRequest(
                request_id=f"req-{i}",
                prompt=prompt,
                spans=tuple(spans[c] for c in chosen),
                features=tuple(features[c].rows for c in chosen),
                sampling=SamplingParams(**options),  # type: ignore[arg-type]
            )
        )
    return made


def run_all(engine: DynamicBatcher, batch: list[GenerationRequest]) -> list[GenerationResult]:
    futures = [engine.submit(request) for request in batch]
    return [future.result(timeout=120) for future in futures]


def test_batched_results_equal_one_at_a_time(vlm: TransformersVlm) -> None:
    batch = requests(vlm, 8)
    engine = start_transformers_engine(vlm, max_batch_size=8)
    together = run_all(engine, batch)
    assert engine.max_batch_seen > 1, "requests should have shared decode steps"
    engine.close()
    alone_engine = start_transformers_engine(vlm, max_batch_size=1)
    alone = run_all(alone_engine, batch)
    alone_engine.close()
    for a, b, request in zip(together, alone, batch, strict=True):
        assert a.completion_ids == b.completion_ids, request.request_id
        assert a.request_id == request.request_id
        assert a.finish_reason is FinishReason.LENGTH
        assert a.num_completion_tokens == request.sampling.max_new_tokens
        assert a.num_prompt_tokens > sum(s.token_range.length for s in request.spans)
        assert a.timings.queue_s >= 0 and a.timings.prefill_s > 0 and a.timings.decode_s >= 0


def test_a_long_request_does_not_hold_back_short_ones(vlm: TransformersVlm) -> None:
    long_request, short_request = requests(vlm, 2)
    long_request = dataclasses.replace(long_request, sampling=SamplingParams(max_new_tokens=300))
    engine = start_transformers_engine(vlm, max_batch_size=4)
    long_future = engine.submit(long_request)
    # The long one decodes when the short one comes.
    wait_for(lambda: engine.num_steps >= 1, "a decode step", timeout_s=120)
    short_result = engine.submit(short_request).result(timeout=120)
    assert not long_future.done(), "the short request should finish while the long one runs"
    assert long_future.result(timeout=120).num_completion_tokens == 300
    assert short_result.num_completion_tokens == short_request.sampling.max_new_tokens
    engine.close()


def test_seeded_sampling_is_reproducible_and_seed_dependent(vlm: TransformersVlm) -> None:
    engine = start_transformers_engine(vlm)
    sampled = {"temperature": 1.5, "top_p": 0.95, "top_k": 50, "max_new_tokens": 12}
    first = run_all(engine, requests(vlm, 3, seed=7, **sampled))
    again = run_all(engine, requests(vlm, 3, seed=7, **sampled))
    other = run_all(engine, requests(vlm, 3, seed=8, **sampled))
    engine.close()
    assert [r.completion_ids for r in first] == [r.completion_ids for r in again]
    assert [r.completion_ids for r in first] != [r.completion_ids for r in other]


def test_stop_string_ends_the_text_before_it(vlm: TransformersVlm) -> None:
    engine = start_transformers_engine(vlm)
    (free,) = run_all(engine, requests(vlm, 1, max_new_tokens=12))
    stop = free.text[3:5]
    assert stop, "the tiny model should produce some text"
    (stopped,) = run_all(engine, requests(vlm, 1, max_new_tokens=12, stop_strings=(stop,)))
    engine.close()
    assert stopped.finish_reason is FinishReason.STOP_STRING
    assert stopped.text == free.text[: free.text.find(stop)]
    assert stop not in stopped.text


def test_eos_ends_generation(vlm: TransformersVlm) -> None:
    engine = start_transformers_engine(vlm)
    (free,) = run_all(engine, requests(vlm, 1, max_new_tokens=12))
    engine.close()
    # Declare the model's fourth token an end-of-sequence token: generation must stop there.
    ending = dataclasses.replace(vlm, eos_token_ids=frozenset({free.completion_ids[3]}))
    engine = start_transformers_engine(ending)
    (ended,) = run_all(engine, requests(ending, 1, max_new_tokens=12))
    engine.close()
    first_eos = free.completion_ids.index(free.completion_ids[3])
    assert ended.finish_reason is FinishReason.EOS
    assert ended.completion_ids == free.completion_ids[:first_eos]


def test_bad_requests_fail_alone(vlm: TransformersVlm) -> None:
    good = requests(vlm, 3)
    no_span = dataclasses.replace(good[0], request_id="no-span", prompt="Look at <image>")
    no_span = dataclasses.replace(no_span, spans=(), features=())
    too_long = dataclasses.replace(
        good[1], request_id="too-long", sampling=SamplingParams(max_new_tokens=vlm.max_context)
    )
    engine = start_transformers_engine(vlm)
    futures = [engine.submit(r) for r in [good[0], no_span, too_long, good[2]]]
    with pytest.raises(AliasWithoutSpanError, match="<image>"):
        futures[1].result(timeout=120)
    with pytest.raises(PromptTooLongError, match="exceed the context"):
        futures[2].result(timeout=120)
    assert futures[0].result(timeout=120).request_id == good[0].request_id
    assert futures[3].result(timeout=120).request_id == good[2].request_id
    engine.close()


def test_request_with_mismatched_features_is_refused(vlm: TransformersVlm) -> None:
    good = requests(vlm, 1)[0]
    with pytest.raises(JobError, match="image rows"):
        dataclasses.replace(good, features=(good.features[0][:-1], *good.features[1:]))
    with pytest.raises(JobError, match="spans but"):
        dataclasses.replace(good, features=())


def test_close_fails_what_is_left(vlm: TransformersVlm) -> None:
    engine = start_transformers_engine(vlm, max_batch_size=1)
    slow = dataclasses.replace(requests(vlm, 1)[0], sampling=SamplingParams(max_new_tokens=400))
    futures = [engine.submit(slow) for _ in range(3)]
    # The first is decoding, the others wait.
    wait_for(lambda: engine.num_steps >= 1, "a decode step", timeout_s=120)
    engine.close()
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(timeout=120).finish_reason.value)
        except EngineClosedError:
            outcomes.append("closed")
    assert outcomes.count("closed") >= 2
    with pytest.raises(EngineClosedError):
        engine.submit(slow).result(timeout=5)


def test_only_the_engine_thread_runs_the_model(vlm: TransformersVlm) -> None:
    seen: set[str] = set()

    class Watching(TransformersStepModel):
        def decode(self, sequences):  # type: ignore[no-untyped-def]
            seen.add(threading.current_thread().name)
            return super().decode(sequences)

    engine = DynamicBatcher(Watching(vlm), name="engine-thread")
    run_all(engine, requests(vlm, 2))
    engine.close()
    assert seen == {"engine-thread"}
