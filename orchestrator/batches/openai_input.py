"""Lines of an OpenAI Batch input file, read as vlmq requests or as line errors.

A line is `{"custom_id", "method": "POST", "url", "body"}`. Two endpoints are served:
`/v1/chat/completions` (OpenAI's chat body; its messages become a prompt through the model's
chat template) and vlmq's own `/vlmq/v1/generate` (a raw prompt with one `<image>` per entry of
an `images` list of image URLs, no template involved). Every line becomes either a
`BatchRequest` that a `JobSpec` accepts or a `LineError` with its line number and a stable
code; a bad line never stops the lines after it. docs/BATCHES.md lists every field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from orchestrator.batches.body_fields import check_body_fields, model_of, sampling_of
from orchestrator.batches.chat_messages import chat_prompt
from orchestrator.batches.chat_template import ChatTemplate
from orchestrator.batches.image_urls import image_key, line_image
from orchestrator.batches.line_errors import (
    LineError,
    LineErrorCode,
    LineRefusedError,
    check_unicode,
    json_kind,
    quoted,
    refuse_unknown,
)
from orchestrator.image_ref import ImageInput
from orchestrator.job_limits import IMAGE_PLACEHOLDER
from orchestrator.queue.schema import InvalidPayloadError, JobSpec
from worker.errors import InvalidRequestError
from worker.sampling_params import SamplingParams

__all__ = [
    "CHAT_ENDPOINT",
    "ENDPOINTS",
    "GENERATE_ENDPOINT",
    "MAX_CUSTOM_ID_CHARS",
    "MAX_LINE_BYTES",
    "BatchRequest",
    "LineError",
    "LineErrorCode",
    "parse_line",
    "read_lines",
]

CHAT_ENDPOINT = "/v1/chat/completions"
GENERATE_ENDPOINT = "/vlmq/v1/generate"
ENDPOINTS = (CHAT_ENDPOINT, GENERATE_ENDPOINT)
# A valid job holds at most 62 MiB of images, 83 MiB as base64: no longer line can be one.
MAX_LINE_BYTES = 100 << 20
MAX_CUSTOM_ID_CHARS = 512
LINE_FIELDS = ("custom_id", "method", "url", "body")


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One good line: what its job will carry."""

    line: int  # 1-based, blank lines counted
    custom_id: str
    endpoint: str  # one of ENDPOINTS
    prompt: str  # one IMAGE_PLACEHOLDER per image, in order
    images: tuple[ImageInput, ...]
    sampling: SamplingParams
    model: str | None  # as the line gave it; not checked against the served model
    image_keys: tuple[str, ...]  # one per image: see image_urls.image_key


def read_lines(
    stream: BinaryIO, template: ChatTemplate | None, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[BatchRequest | LineError]:
    """Every line of `stream` in order, parsed. Blank lines are skipped (but counted, so line
    numbers are an editor's); a line over `max_line_bytes` is never held in memory whole; a
    custom_id seen on an earlier line makes this one a duplicate_custom_id error."""
    first_line_of: dict[str, int] = {}  # about 100 bytes a line, for a million-line file
    line_no = 0
    while True:
        data = stream.readline(max_line_bytes + 1)
        if not data:
            return
        line_no += 1
        if not data.endswith(b"\n") and len(data) > max_line_bytes:
            _skip_rest_of_line(stream)
            yield LineError(
                line_no, None, LineErrorCode.LINE_TOO_LONG,
                f"the line is over the limit of {max_line_bytes:,} bytes",
            )
            continue
        if line_no == 1:
            data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
        if not data.strip():
            continue
        item = parse_line(line_no, data, template)
        if item.custom_id is not None:
            first = first_line_of.setdefault(item.custom_id, line_no)
            if first != line_no:
                item = LineError(
                    line_no, item.custom_id, LineErrorCode.DUPLICATE_CUSTOM_ID,
                    f"custom_id {quoted(item.custom_id)} was used first on line {first}",
                )
        yield item


def _skip_rest_of_line(stream: BinaryIO) -> None:
    while True:
        chunk = stream.readline(1 << 20)
        if not chunk or chunk.endswith(b"\n"):
            return


def parse_line(
    line_no: int, text: bytes, template: ChatTemplate | None
) -> BatchRequest | LineError:
    """One line of the file (its newline optional); chat lines need the model's template."""
    newline = 2 if text.endswith(b"\r\n") else 1 if text.endswith(b"\n") else 0
    if len(text) - newline > MAX_LINE_BYTES:
        return LineError(
            line_no, None, LineErrorCode.LINE_TOO_LONG,
            f"the line is over the limit of {MAX_LINE_BYTES:,} bytes",
        )
    custom_id: str | None = None
    try:
        fields = _json_object(text)
        custom_id = _custom_id(fields)
        return _request(line_no, custom_id, fields, template)
    except LineRefusedError as refused:
        return LineError(line_no, custom_id, refused.code, refused.message)


def _json_object(text: bytes) -> dict[str, Any]:
    try:
        value = json.loads(
            text.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except UnicodeDecodeError as error:
        raise LineRefusedError(
            LineErrorCode.INVALID_JSON, f"the line is not UTF-8 (byte {error.start:,})"
        ) from None
    except RecursionError:
        raise LineRefusedError(LineErrorCode.INVALID_JSON, "the line nests too deeply") from None
    except json.JSONDecodeError as error:
        # Its own "line 1 column 5" would count lines inside this one line.
        raise LineRefusedError(
            LineErrorCode.INVALID_JSON,
            f"the line is not valid JSON: {error.msg} at character {error.pos + 1:,}",
        ) from None
    except ValueError as error:  # a repeated key, NaN, an int of 4,300+ digits
        raise LineRefusedError(
            LineErrorCode.INVALID_JSON, f"the line is not valid JSON: {error}"
        ) from None
    if not isinstance(value, dict):
        raise LineRefusedError(
            LineErrorCode.INVALID_JSON, f"the line must be a JSON object, got {json_kind(value)}"
        )
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in pairs:
        if key in fields:
            raise ValueError(f"key {quoted(key)} appears twice in one object")
        fields[key] = value
    return fields


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _custom_id(fields: dict[str, Any]) -> str:
    custom_id = fields.get("custom_id")
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID_CHARS:
        got = f"{len(custom_id):,} characters" if isinstance(custom_id, str) else (
            json_kind(custom_id)
        )
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST,
            f"custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters, got {got}",
        )
    check_unicode(custom_id, "custom_id")
    return custom_id


def _request(
    line_no: int, custom_id: str, fields: dict[str, Any], template: ChatTemplate | None
) -> BatchRequest:
    refuse_unknown(fields, LINE_FIELDS, "")
    for name in LINE_FIELDS:
        if name not in fields:
            raise LineRefusedError(LineErrorCode.INVALID_REQUEST, f"{name} is missing")
    if fields["method"] != "POST":
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST, f'method must be "POST", got {quoted(fields["method"])}'
        )
    url = fields["url"]
    if url not in ENDPOINTS:
        raise LineRefusedError(
            LineErrorCode.UNSUPPORTED_ENDPOINT,
            f"url {quoted(url)} is not served; vlmq serves {' and '.join(ENDPOINTS)}",
        )
    body = fields["body"]
    if not isinstance(body, dict):
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST, f"body must be an object, got {json_kind(body)}"
        )
    if url == CHAT_ENDPOINT:
        if template is None:
            raise LineRefusedError(
                LineErrorCode.NO_CHAT_TEMPLATE,
                "the served model has no chat template, so chat messages cannot become a "
                f"prompt; send a raw prompt to {GENERATE_ENDPOINT} instead",
            )
        check_body_fields(body, ("messages",))
        prompt, images = chat_prompt(body, template)
    else:
        check_body_fields(body, ("prompt", "images"))
        prompt, images = _raw_prompt(body)
    sampling = sampling_of(body)
    model = model_of(body)
    _check_job(prompt, images, sampling)
    return BatchRequest(
        line=line_no,
        custom_id=custom_id,
        endpoint=url,
        prompt=prompt,
        images=images,
        sampling=sampling,
        model=model,
        image_keys=tuple(image_key(image) for image in images),
    )


def _raw_prompt(body: dict[str, Any]) -> tuple[str, tuple[ImageInput, ...]]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST, f"body.prompt must be a string, got {json_kind(prompt)}"
        )
    urls = body.get("images")
    if urls is None:
        urls = []
    if not isinstance(urls, list):
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST,
            f"body.images must be a list of image URLs, got {json_kind(urls)}",
        )
    images: list[ImageInput] = []
    for index, url in enumerate(urls):
        images.append(line_image(url, f"body.images[{index}]", len(images)))
    num_placeholders = prompt.count(IMAGE_PLACEHOLDER)
    if num_placeholders != len(images):
        raise LineRefusedError(
            LineErrorCode.PLACEHOLDER_MISMATCH,
            f"body.prompt has {num_placeholders} {IMAGE_PLACEHOLDER} placeholders for "
            f"{len(images)} images (one per image, in order)",
        )
    return prompt, tuple(images)


def _check_job(prompt: str, images: tuple[ImageInput, ...], sampling: SamplingParams) -> None:
    """Refuse here what the queue would refuse: the job's own checks, on stand-in names."""
    try:
        JobSpec(job_id="x", queue="q", prompt=prompt, images=images, sampling=sampling)
    except InvalidPayloadError as error:
        code = LineErrorCode.INVALID_REQUEST
        if error.field.startswith("images"):
            code = LineErrorCode.INVALID_IMAGE
        raise LineRefusedError(code, str(error)) from None
    except InvalidRequestError as error:
        raise LineRefusedError(LineErrorCode.INVALID_REQUEST, str(error)) from None
