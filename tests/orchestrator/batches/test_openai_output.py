"""Output and error lines in OpenAI's Batch file formats, from job results."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.batches.openai_input import CHAT_ENDPOINT, GENERATE_ENDPOINT
from orchestrator.batches.openai_output import (
    BATCH_CANCELLED,
    BATCH_EXPIRED,
    cancelled_record,
    error_code,
    error_record,
    expired_record,
    failure_record,
    output_record,
)
from orchestrator.queue.schema import JobResult, JobState, ResultError, ResultTimings

TIMINGS = ResultTimings(0.5, 1.5, 0.2, 1.2)
REQUEST_ID = "batch_req_0123456789abcdef"


def result(
    state: JobState = JobState.SUCCEEDED,
    finish_reason: str | None = "eos",
    error: ResultError | None = None,
    text: str | None = "A red bicycle.",
) -> JobResult:
    return JobResult("job-1", state, text, finish_reason, 1234, 56, TIMINGS, 1, {}, error)


def json_round_trip(record: dict[str, Any]) -> dict[str, Any]:
    """The line as a reader of the file gets it."""
    line = json.dumps(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_a_chat_output_line_has_openais_shape() -> None:
    record = json_round_trip(output_record(
        "req-1", result(), endpoint=CHAT_ENDPOINT, model="tiny-pixtral", request_id=REQUEST_ID,
        created=1_711_652_795,
    ))
    assert record == {
        "id": REQUEST_ID,
        "custom_id": "req-1",
        "response": {
            "status_code": 200,
            "request_id": REQUEST_ID,
            "body": {
                "id": "chatcmpl-0123456789abcdef",
                "object": "chat.completion",
                "created": 1_711_652_795,
                "model": "tiny-pixtral",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "A red bicycle.", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }],
                "usage": {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290},
            },
        },
        "error": None,
    }


def test_a_raw_prompt_output_line_is_a_text_completion() -> None:
    body = output_record(
        "raw-1", result(finish_reason="length"), endpoint=GENERATE_ENDPOINT, model="m",
        request_id=REQUEST_ID, created=7,
    )["response"]["body"]
    assert body["object"] == "text_completion" and body["id"] == "cmpl-0123456789abcdef"
    assert body["choices"] == [
        {"index": 0, "text": "A red bicycle.", "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"]["total_tokens"] == 1290


@pytest.mark.parametrize(
    ("ours", "openai"), [("eos", "stop"), ("stop_string", "stop"), ("length", "length")]
)
def test_finish_reasons_are_openais(ours: str, openai: str) -> None:
    record = output_record(
        "a", result(finish_reason=ours), endpoint=CHAT_ENDPOINT, model="m", request_id="r"
    )
    body = record["response"]["body"]
    assert body["choices"][0]["finish_reason"] == openai
    assert isinstance(body["created"], int)  # now, when not given


def test_only_a_succeeded_job_has_an_output_line() -> None:
    failed = result(JobState.FAILED, None, ResultError("CorruptImageError", "bad", True))
    with pytest.raises(ValueError, match="did not succeed"):
        output_record("a", failed, endpoint=CHAT_ENDPOINT, model="m", request_id="r")
    with pytest.raises(ValueError, match="endpoint"):
        output_record("a", result(), endpoint="/v1/embeddings", model="m", request_id="r")


def test_an_error_line_that_never_ran_has_no_response() -> None:
    assert json_round_trip(expired_record("req-9", request_id=REQUEST_ID)) == {
        "id": REQUEST_ID,
        "custom_id": "req-9",
        "response": None,
        "error": {
            "code": BATCH_EXPIRED,
            "message": "This request could not be executed before the completion window expired.",
        },
    }
    cancelled = cancelled_record(None, request_id=REQUEST_ID)
    assert cancelled["error"]["code"] == BATCH_CANCELLED and cancelled["response"] is None
    assert cancelled["custom_id"] is None  # a line without a usable custom_id


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "invalid_request_error"), (503, "server_error")]
)
def test_an_error_line_that_was_answered_has_its_status(status: int, kind: str) -> None:
    record = json_round_trip(error_record(
        "req-2", "invalid_image", "line 3: bad base64", request_id=REQUEST_ID, status_code=status
    ))
    assert record == {
        "id": REQUEST_ID,
        "custom_id": "req-2",
        "response": {
            "status_code": status,
            "request_id": REQUEST_ID,
            "body": {"error": {"message": "line 3: bad base64", "type": kind, "param": None,
                               "code": "invalid_image"}},
        },
        "error": None,
    }
    with pytest.raises(ValueError, match="400 to 599"):
        error_record("a", "c", "m", request_id="r", status_code=200)


FAILURES = {
    "the job's fault": (
        result(JobState.FAILED, None, ResultError("CorruptImageError", "truncated PNG", True)),
        400, "corrupt_image", "truncated PNG",
    ),
    "the system's fault": (
        result(JobState.FAILED, None, ResultError("EngineDiedError", "thread died", False)),
        500, "engine_died", "thread died",
    ),
    "dead": (
        result(JobState.DEAD, None, ResultError("LeaseLostError", "worker gone", False), None),
        500, "job_dead", "given up after 1 deliveries: worker gone",
    ),
}


@pytest.mark.parametrize("case", FAILURES)
def test_a_failed_job_maps_to_a_status_and_code(case: str) -> None:
    failed, status, code, message = FAILURES[case]
    record = failure_record("req-3", failed, request_id=REQUEST_ID)
    assert record["error"] is None
    assert record["response"]["status_code"] == status
    assert record["response"]["body"]["error"]["code"] == code
    assert record["response"]["body"]["error"]["message"] == message


def test_a_cancelled_job_is_batch_cancelled_and_a_succeeded_one_no_failure() -> None:
    cancelled = result(JobState.CANCELLED, None, None, None)
    assert failure_record("a", cancelled, request_id="r")["error"]["code"] == BATCH_CANCELLED
    with pytest.raises(ValueError, match="succeeded"):
        failure_record("a", result(), request_id="r")


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        ("CorruptImageError", "corrupt_image"),
        ("ImageTooLargeError", "image_too_large"),
        ("InvalidPayloadError", "invalid_payload"),
        ("HTTPError", "http"),
        ("URLFetchTimeoutError", "url_fetch_timeout"),
        ("weird name!", "weird_name"),
        ("Error", "error"),
    ],
)
def test_error_types_become_snake_case_codes(error_type: str, code: str) -> None:
    assert error_code(error_type) == code
