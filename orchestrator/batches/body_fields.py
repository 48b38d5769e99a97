"""The fields of a batch line's body that both endpoints read: sampling, the model's name, and
which of OpenAI's other fields vlmq accepts.

A field that would change the output if it were honoured (logprobs, tools, penalties, n > 1,
...) is refused unless it holds the value that changes nothing; a field that does not change
what is generated (user, metadata, store, ...) is accepted and not used; a field OpenAI's format
does not have is an error. null stands for "left out" everywhere, as in OpenAI's API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.batches.line_errors import (
    LineErrorCode,
    LineRefusedError,
    check_unicode,
    field_name,
    json_kind,
    optional_field,
    quoted,
)
from worker.errors import InvalidRequestError
from worker.sampling_params import SamplingParams

MAX_MODEL_CHARS = 256  # the model name rides in the job's metadata
# Where a body leaves them out: OpenAI's temperature, and SamplingParams' token budget
# (OpenAI's own default, "as many as the context holds", would be unbounded here).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_MAX_TOKENS = SamplingParams().max_new_tokens

SAMPLING_FIELDS = (
    "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
    "stop", "n", "stream", "stream_options",
)


def _never(_: object) -> bool:
    return False


def _zero(value: object) -> bool:
    return type(value) in (int, float) and value == 0


def _one(value: object) -> bool:
    return type(value) in (int, float) and value == 1


# OpenAI's (and vLLM's) fields that change the output: each with the test for its no-op value.
NO_OP_ONLY: Mapping[str, Callable[[object], bool]] = {
    "logprobs": lambda v: v is False,
    "top_logprobs": _zero,
    "tools": lambda v: v == [],
    "tool_choice": lambda v: v == "none",
    "functions": lambda v: v == [],
    "function_call": lambda v: v == "none",
    "response_format": lambda v: v == {"type": "text"},
    "logit_bias": lambda v: v == {},
    "presence_penalty": _zero,
    "frequency_penalty": _zero,
    "repetition_penalty": _one,
    "min_p": _zero,
    "modalities": lambda v: v == ["text"],
    "audio": _never,
    "prediction": _never,
    "web_search_options": _never,
    "reasoning_effort": _never,
    "verbosity": _never,
}
# OpenAI's fields that do not change what is generated.
IGNORED_FIELDS = (
    "user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
    "safety_identifier",
)


def check_body_fields(body: dict[str, Any], endpoint_fields: tuple[str, ...]) -> None:
    """Refuse unknown fields, and known ones that vlmq cannot honour."""
    known = (*endpoint_fields, *SAMPLING_FIELDS, *IGNORED_FIELDS)
    for key, value in body.items():
        if key in known:
            continue
        accepts = NO_OP_ONLY.get(key)
        if accepts is None:
            raise LineRefusedError(
                LineErrorCode.UNKNOWN_FIELD, f"body.{field_name(key)} is not a field vlmq knows"
            )
        if value is not None and not accepts(value):
            raise LineRefusedError(
                LineErrorCode.UNSUPPORTED_FIELD,
                f"body.{key} = {quoted(value)} is not supported (vlmq cannot do what it asks); "
                f"leave it out",
            )


def model_of(body: dict[str, Any]) -> str | None:
    model: str | None = optional_field(body, "model", str, "a string", "body.")
    if model is not None:
        if not 1 <= len(model) <= MAX_MODEL_CHARS:
            raise LineRefusedError(
                LineErrorCode.INVALID_REQUEST,
                f"body.model must have 1 to {MAX_MODEL_CHARS} characters, got {len(model):,}",
            )
        check_unicode(model, "body.model")
    return model


def sampling_of(body: dict[str, Any]) -> SamplingParams:
    def read(key: str, kind: type, name: str) -> Any:
        return optional_field(body, key, kind, name, "body.")

    n = read("n", int, "an integer")
    if n is not None and n != 1:
        raise LineRefusedError(
            LineErrorCode.UNSUPPORTED_FIELD, f"body.n = {n}: vlmq answers once (n = 1)"
        )
    if read("stream", bool, "true or false"):
        raise LineRefusedError(
            LineErrorCode.UNSUPPORTED_FIELD, "body.stream = true: a batch line is never streamed"
        )
    if body.get("stream_options") is not None:
        raise LineRefusedError(
            LineErrorCode.UNSUPPORTED_FIELD, "body.stream_options: a batch line is never streamed"
        )
    max_tokens = read("max_tokens", int, "an integer")
    max_completion = read("max_completion_tokens", int, "an integer")
    if None not in (max_tokens, max_completion) and max_tokens != max_completion:
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST,
            "body.max_tokens and body.max_completion_tokens differ; give one of them",
        )
    temperature = read("temperature", float, "a number")
    top_p = read("top_p", float, "a number")
    top_k = read("top_k", int, "an integer")
    try:
        return SamplingParams(
            max_new_tokens=next(
                (v for v in (max_completion, max_tokens) if v is not None), DEFAULT_MAX_TOKENS
            ),
            temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            top_k=0 if top_k in (None, -1) else top_k,  # vLLM's -1 ("every token") is our 0
            seed=read("seed", int, "an integer"),
            stop_strings=_stop_strings(body.get("stop")),
        )
    except InvalidRequestError as error:
        raise LineRefusedError(LineErrorCode.INVALID_REQUEST, f"body: {error}") from None


def _stop_strings(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise LineRefusedError(
        LineErrorCode.INVALID_REQUEST,
        f"body.stop must be a string or a list of strings, got {json_kind(stop)}",
    )
