"""Lines of OpenAI's Batch output and error files, from vlmq's job results.

An output line is `{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"},
"error": null}`; its body is a `chat.completion` for `/v1/chat/completions` and, for vlmq's
`/vlmq/v1/generate`, a `text_completion` as OpenAI's `/v1/completions` writes it (the text in
`choices[0].text`). An error line takes one of OpenAI's two shapes: a request that ran and was
refused or failed has a `response` with its 4xx/5xx `status_code` and an `{"error": {"message",
"type", "param", "code"}}` body, and `"error": null`; a request that never ran (`batch_expired`,
`batch_cancelled`) has `"response": null` and `"error": {"code", "message"}`.
"""

from __future__ import annotations

import re
import time
from typing import Any

from orchestrator.batches.openai_input import CHAT_ENDPOINT, ENDPOINTS
from orchestrator.queue.schema import JobResult, JobState

BATCH_EXPIRED = "batch_expired"
BATCH_CANCELLED = "batch_cancelled"
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because its batch was cancelled."
# worker.generation's finish reasons as OpenAI names them: a stop string ends like EOS does.
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "length": "length"}

_CAMEL_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def output_record(
    custom_id: str,
    result: JobResult,
    *,
    endpoint: str,
    model: str,
    request_id: str,
    created: int | None = None,
) -> dict[str, Any]:
    """The output line of a succeeded job. `request_id` is the line's `id` and its response's
    `request_id`; `created` (Unix seconds) defaults to now: pass the job's finish time for an
    export that reads the same every time."""
    if result.state is not JobState.SUCCEEDED or result.text is None:
        raise ValueError(f"job {result.job_id} did not succeed ({result.state.value})")
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint {endpoint!r} is none of {', '.join(ENDPOINTS)}")
    finish_reason = FINISH_REASONS[result.finish_reason or "eos"]
    suffix = request_id.removeprefix("batch_req_")
    if endpoint == CHAT_ENDPOINT:
        head = {"id": f"chatcmpl-{suffix}", "object": "chat.completion"}
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
    else:
        head = {"id": f"cmpl-{suffix}", "object": "text_completion"}
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish_reason}
    body = {
        **head,
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }
    return {
        "id": request_id,
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body},
        "error": None,
    }


def error_record(
    custom_id: str | None,
    code: str,
    message: str,
    *,
    request_id: str,
    status_code: int | None = None,
) -> dict[str, Any]:
    """An error line: with a `status_code` (400 to 599) the request ran and was answered with
    it; without one it never ran (OpenAI's shape for batch_expired and batch_cancelled)."""
    if status_code is None:
        return {
            "id": request_id,
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    if not 400 <= status_code <= 599:
        raise ValueError(f"an error's status_code is 400 to 599, got {status_code}")
    kind = "invalid_request_error" if status_code < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return {
        "id": request_id,
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }


def expired_record(custom_id: str | None, *, request_id: str) -> dict[str, Any]:
    return error_record(custom_id, BATCH_EXPIRED, EXPIRED_MESSAGE, request_id=request_id)


def cancelled_record(custom_id: str | None, *, request_id: str) -> dict[str, Any]:
    return error_record(custom_id, BATCH_CANCELLED, CANCELLED_MESSAGE, request_id=request_id)


def failure_record(custom_id: str | None, result: JobResult, *, request_id: str) -> dict[str, Any]:
    """The error line of a job that ended without succeeding.

    A failure that is the job's own (a corrupt image, a prompt too long) is a 400, one of the
    system's (or a job given up after too many deliveries) a 500, each with its error's type as
    the code ("CorruptImageError" is "corrupt_image"); a cancelled job is batch_cancelled.
    """
    if result.state is JobState.SUCCEEDED:
        raise ValueError(f"job {result.job_id} succeeded: it has an output line")
    if result.state is JobState.CANCELLED:
        return cancelled_record(custom_id, request_id=request_id)
    error = result.error
    if error is None:
        code, message, job_fault = f"job_{result.state.value}", result.state.value, False
    else:
        code, message, job_fault = error_code(error.type), error.message, error.job_fault
    if result.state is JobState.DEAD:
        code = "job_dead"
        message = f"given up after {result.deliveries} deliveries: {message}"
    status = 400 if job_fault and result.state is JobState.FAILED else 500
    return error_record(custom_id, code, message, request_id=request_id, status_code=status)


def error_code(error_type: str) -> str:
    """An exception's class name as a snake_case code, its "Error" suffix dropped."""
    words = _CAMEL_WORD.sub("_", error_type.removesuffix("Error")).lower()
    code = re.sub(r"[^a-z0-9]+", "_", words).strip("_")
    return code or "error"
