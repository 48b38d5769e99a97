"""A job's checks: construction refuses wrong types, `validate_job` gives the whole verdict,
each refusal an `InvalidRequestError` that names the field."""

from __future__ import annotations

import random
from typing import Any

import pytest

from orchestrator.image_ref import ImagePath, ImageURL
from orchestrator.pipeline.job import (
    MAX_JOB_ID_BYTES,
    MAX_PROMPT_BYTES,
    JobOutcome,
    JobRequest,
    job_id_of,
    validate_job,
)
from tests.support.bad_jobs import KINDS, around_checks, bad_job
from worker.errors import InvalidRequestError, JobError
from worker.sampling_params import SamplingParams

PNG = b"\x89PNG\r\n\x1a\n"  # the bytes are judged later, by decoding: any will do here

WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("job_id", 7, "job_id must be a str, got int"),
    ("job_id", None, "job_id must be a str, got None"),
    ("prompt", None, "prompt must be a str, got None"),
    ("prompt", b"<image>", "prompt must be a str, got bytes"),
    ("images", PNG, "images must be a tuple of bytes, got bytes (one image? pass it as (data,))"),
    ("images", [PNG], "images must be a tuple of bytes, got list"),
    ("images", None, "images must be a tuple of bytes, got None"),
    ("images", ("a picture",), "images[0] must be bytes (an encoded image), an ImageURL or an "
                               "ImagePath, got str"),
    ("images", (PNG, 5), "images[1] must be bytes (an encoded image), an ImageURL or an "
                         "ImagePath, got int"),
    ("images", (PNG, None), "images[1] must be bytes"),
    ("images", (bytearray(PNG),), "images[0] must be bytes (an encoded image), an ImageURL or "
                                  "an ImagePath, got bytearray"),
    ("images", (PNG, ImageURL(None)), "images[1].url must be a str, got None"),  # type: ignore[arg-type]
    ("images", (ImagePath(b"a.png"),), "images[0].path must be a str, got bytes"),  # type: ignore[arg-type]
    ("sampling", None, "sampling must be a SamplingParams, got None"),
    ("sampling", {"max_new_tokens": 3}, "sampling must be a SamplingParams, got dict"),
]


def _fields(**changes: Any) -> dict[str, Any]:
    prompt = "<image>" * len(changes["images"]) if isinstance(changes.get("images"), tuple) else ""
    return {"job_id": "j", "prompt": prompt, "images": (), "sampling": SamplingParams(), **changes}


@pytest.mark.parametrize(("name", "value", "message"), WRONG_TYPES)
def test_construction_refuses_a_field_of_the_wrong_type(
    name: str, value: Any, message: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        JobRequest(**_fields(**{name: value}))
    assert message in str(caught.value)


@pytest.mark.parametrize(("name", "value", "message"), WRONG_TYPES)
def test_validation_refuses_the_same_in_a_job_built_around_the_constructor(
    name: str, value: Any, message: str
) -> None:
    job = around_checks(JobRequest, **_fields(**{name: value}))
    with pytest.raises(InvalidRequestError) as caught:
        validate_job(job)
    assert message in str(caught.value)


@pytest.mark.parametrize("job", [None, {"job_id": "j", "prompt": "hi"}, "hi", b"\x89PNG"])
def test_validation_refuses_what_is_not_a_job(job: object) -> None:
    with pytest.raises(InvalidRequestError, match="a job must be a JobRequest, got"):
        validate_job(job)


@pytest.mark.parametrize(
    "sampling",
    [{"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"seed": 2**64},
     {"stop_strings": "stop"}],
)
def test_validation_checks_sampling_params_that_skipped_their_own_checks(
    sampling: dict[str, Any]
) -> None:
    job = JobRequest("j", "hi", (), around_checks(SamplingParams, **sampling))
    with pytest.raises(InvalidRequestError, match=next(iter(sampling))):
        validate_job(job)


def test_a_lone_surrogate_is_refused_with_its_place() -> None:
    job = JobRequest("j", "caf\u00e9 \ud800 bar")  # constructible: the content is judged later
    with pytest.raises(InvalidRequestError) as caught:
        validate_job(job)
    message = str(caught.value)
    assert "prompt is not valid Unicode: a lone surrogate '\\ud800' at character 5" in message
    message.encode("utf-8")  # the message itself carries no surrogate
    with pytest.raises(InvalidRequestError, match="job_id is not valid Unicode"):
        validate_job(JobRequest("j\udfff", "hi"))


def test_the_prompt_limit_is_on_utf8_bytes_and_inclusive() -> None:
    validate_job(JobRequest("j", "x" * MAX_PROMPT_BYTES))
    validate_job(JobRequest("j", "\u00e9" * (MAX_PROMPT_BYTES // 2)))  # two bytes each
    with pytest.raises(InvalidRequestError) as caught:
        validate_job(JobRequest("j", "\u00e9" * (MAX_PROMPT_BYTES // 2) + "x"))
    assert f"prompt is {MAX_PROMPT_BYTES + 1:,} bytes of UTF-8, over the limit of " \
        f"{MAX_PROMPT_BYTES:,}" in str(caught.value)
    with pytest.raises(InvalidRequestError) as caught:
        validate_job(JobRequest("j", "x" * (10 * MAX_PROMPT_BYTES)))
    assert f"prompt is {10 * MAX_PROMPT_BYTES:,} characters" in str(caught.value)


def test_a_job_id_is_a_short_non_empty_name() -> None:
    validate_job(JobRequest("j" * MAX_JOB_ID_BYTES, "hi"))
    with pytest.raises(InvalidRequestError, match="job_id must not be empty"):
        validate_job(JobRequest("", "hi"))
    with pytest.raises(InvalidRequestError, match="job_id is") as caught:
        validate_job(JobRequest("j" * (MAX_JOB_ID_BYTES + 1), "hi"))
    assert len(str(caught.value)) < 200  # the message names the job by a short repr


@pytest.mark.parametrize(("prompt", "num_images"), [("look", 1), ("<image> <image>", 1),
                                                    ("<image>", 0), ("<image", 1)])
def test_placeholders_must_match_the_images(prompt: str, num_images: int) -> None:
    with pytest.raises(InvalidRequestError, match="placeholders for"):
        validate_job(JobRequest("j", prompt, (PNG,) * num_images))


def test_good_jobs_pass() -> None:
    for job in [
        JobRequest("j", ""),
        JobRequest("j", "Compare <image> with <image>.", (PNG, b"")),
        JobRequest("\u4e2d\u6587", "\U0001f600 <image>", (PNG,), SamplingParams(5, seed=3)),
    ]:
        validate_job(job)


def test_every_bad_kind_of_the_fuzz_is_refused_before_any_work() -> None:
    """The jobs the pipeline fuzz sends: those the job alone can judge are refused here."""
    rng = random.Random(3)
    for kind in KINDS:
        bad = bad_job(kind, f"bad-{kind}", rng)
        if bad.error_type == "InvalidRequestError":
            with pytest.raises(InvalidRequestError):
                validate_job(bad.job)
        else:  # judged by decoding, or by the pipeline's image limits
            validate_job(bad.job)


def test_outcomes_name_their_job_by_a_str() -> None:
    assert JobOutcome("j", None, None, 0).job_id == "j"
    assert JobOutcome(7, None, None, 0).job_id == "7"  # type: ignore[arg-type]
    assert len(JobOutcome(b"x" * 10**6, None, None, 0).job_id) < 100  # type: ignore[arg-type]
    assert job_id_of(around_checks(JobRequest, job_id=None, prompt="")) == "None"
    assert job_id_of(JobRequest("j", "")) == "j"
    assert job_id_of({"job_id": "j"}) == "<dict without a job_id>"


def test_invalid_requests_are_the_jobs_fault() -> None:
    assert issubclass(InvalidRequestError, JobError)
