"""Every decode step against transformers' own model over the whole sequence.

A prompt and a forced continuation go, as one sequence, through transformers' model as its users
call it (`input_ids` from the model's own tokenizer with the processor's image expansion,
`pixel_values` from its image processor). Its logit at each continuation position must equal
what the engine's step model gives when it prefills the prompt and then decodes the same
tokens one by one, alone and in a batch whose sequences have other lengths, other images (so
other M-RoPE offsets on Qwen2-VL) and join at other steps. Both sides run in float32.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from tests.support.hf_reference import (
    chat,
    hf_logits,
    hf_prompt_ids,
    relative_error,
    tower_rows_float32,
)
from tests.support.transformers_fixtures import pattern_image
from worker.engines.transformers.embedding_injection import placeholder_ids
from worker.engines.transformers.language import TransformersStepModel
from worker.engines.transformers.model import TransformersVlm
from worker.engines.transformers.sequence import Sequence
from worker.engines.transformers.vision import TransformersVision
from worker.generation import GenerationRequest
from worker.sampling_params import SamplingParams
from worker.span import Span
from worker.token_range import RESERVED_ID_BASE, TokenRange

NUM_FORCED = 6
# Relative to the reference's largest logit: float32 against float32, different kernels.
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Case:
    text: str  # one user turn; "<image>" where each image goes, in order
    images: tuple[Image.Image, ...]
    continuation: str  # its tokens are forced, one per decode step
    joins_at: int = 0  # the batch's decode step before which this sequence is prefilled


CASES = {
    "one image": Case("Describe <image> in detail.", (pattern_image(70, 45, seed=5),),
                      " A small red square on the left"),
    "two images, longer": Case(
        "Compare <image> with <image>, then say which is larger and why.",
        (pattern_image(33, 90, seed=11), pattern_image(120, 60, seed=7)),
        " The second one is wider", joins_at=2,
    ),
    "text only": Case("Count to five.", (), " One, two, three, four", joins_at=1),
    "image at the start": Case("<image> What is this?", (pattern_image(29, 29, seed=3),),
                               " It is a pattern of", joins_at=3),
}


def forced_tokens(vlm: TransformersVlm, case: Case) -> list[int]:
    ids = vlm.tokenizer.encode_texts([case.continuation])[0][:NUM_FORCED]
    assert len(ids) == NUM_FORCED and not set(ids) & vlm.eos_token_ids
    return ids


@dataclass
class Reference:
    prompt_ids: list[int]
    logits: list[torch.Tensor]  # after the prompt, then after each forced token: [vocab] each


def reference(vlm: TransformersVlm, case: Case) -> Reference:
    # The images at the size vlmq's engines use, so both sides see the same pixels; how raw
    # images get there is tests/worker/engines/transformers/test_preprocessing_reference.py's.
    prepared = [TransformersVision(vlm).prepare(image) for image in case.images]
    prompt_ids = hf_prompt_ids(vlm, chat(vlm, case.text), prepared)
    logits = hf_logits(vlm, prompt_ids + forced_tokens(vlm, case), prepared)
    start = len(prompt_ids) - 1
    return Reference(prompt_ids, list(logits[start : start + NUM_FORCED + 1]))


def engine_sequence(vlm: TransformersVlm, step: TransformersStepModel, case: Case) -> Sequence:
    """The case as a request whose image rows are the tower's, in float32."""
    vision, spans, rows = TransformersVision(vlm), [], []
    first = RESERVED_ID_BASE + 40_000
    text = case.text
    for index, image in enumerate(case.images):
        alias = f"<img-{index}>"
        text = text.replace("<image>", alias, 1)
        layout = vision.layout_for(image.width, image.height)
        spans.append(Span(alias, TokenRange(3, first, layout.num_rows), layout))
        rows.append(tower_rows_float32(vlm, vision.prepare(image)))
        first += layout.num_rows + 17
    request = GenerationRequest(
        f"forced {case.text}", chat(vlm, text), tuple(spans), tuple(rows),
        sampling=SamplingParams(max_new_tokens=NUM_FORCED + 1),
    )
    return Sequence(request, Future(), step.decode_text)


def engine_prompt_ids(
    vlm: TransformersVlm, step: TransformersStepModel, seq: Sequence
) -> list[int]:
    return placeholder_ids(step.encode(seq), seq.request.spans, vlm.image_token_id)


def run_forced(
    vlm: TransformersVlm, cases: dict[str, Case], *, batched: bool
) -> dict[str, list[torch.Tensor]]:
    """The engine's logits per case: after its prefill, then after each forced token.

    Batched, all running sequences decode together and each joins at its `joins_at` step;
    alone, each runs by itself from the start.
    """
    step = TransformersStepModel(vlm, max_batch_size=len(cases))
    sequences = {name: engine_sequence(vlm, step, case) for name, case in cases.items()}
    forced = {name: forced_tokens(vlm, case) for name, case in cases.items()}
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in cases}
    if not batched:
        for name, seq in sequences.items():
            logits[name].append(step.prefill(seq))
            for token in forced[name]:
                seq.completion_ids.append(token)  # forced at the seam: the last token is ours
                logits[name].append(step.decode([seq])[0])
            step.release(seq)
        return logits
    running: list[str] = []
    for decode_step in range(max(c.joins_at for c in cases.values()) + NUM_FORCED):
        for name, case in cases.items():
            if case.joins_at == decode_step:
                logits[name].append(step.prefill(sequences[name]))
                running.append(name)
        # Newest first, so a row's place in the batch differs from its place at the start.
        running.reverse()
        for name in running:
            sequences[name].completion_ids.append(forced[name][len(logits[name]) - 1])
        if not running:
            continue
        rows = step.decode([sequences[name] for name in running])
        for name, row in zip(running, rows, strict=True):
            logits[name].append(row)
        for name in [n for n in running if len(logits[n]) == NUM_FORCED + 1]:
            running.remove(name)
            step.release(sequences[name])
    assert not running
    return logits


def assert_steps_match(
    vlm: TransformersVlm, name: str, ours: list[torch.Tensor], theirs: Reference
) -> None:
    assert len(ours) == len(theirs.logits) == NUM_FORCED + 1
    for index, (mine, expected) in enumerate(zip(ours, theirs.logits, strict=True)):
        what = "prefill" if index == 0 else f"decode step {index}"
        error = relative_error(mine[: vlm.vocab_size], expected)
        assert error <= TOLERANCE, f"{name}, {what}: logits differ by {error:.2e} of the largest"


@pytest.mark.parametrize("name", CASES)
def test_each_decode_step_equals_transformers_own_alone(vlm: TransformersVlm, name: str) -> None:
    theirs = reference(vlm, CASES[name])
    step = TransformersStepModel(vlm)
    assert engine_prompt_ids(vlm, step, engine_sequence(vlm, step, CASES[name])) == (
        theirs.prompt_ids
    )
    ours = run_forced(vlm, {name: CASES[name]}, batched=False)[name]
    assert_steps_match(vlm, name, ours, theirs)


def test_each_decode_step_equals_transformers_own_in_a_batch(vlm: TransformersVlm) -> None:
    theirs = {name: reference(vlm, case) for name, case in CASES.items()}
    lengths = {len(ref.prompt_ids) for ref in theirs.values()}
    assert len(lengths) == len(CASES), "the batch must mix prompt lengths"
    ours = run_forced(vlm, CASES, batched=True)
    for name in CASES:
        assert_steps_match(vlm, name, ours[name], theirs[name])
