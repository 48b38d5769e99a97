"""Why a line of a batch file is not a job: its stable code and message, and the checks that
say so in words that name the field."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from worker.errors import VlmqError


class LineErrorCode(enum.StrEnum):
    INVALID_JSON = "invalid_json"  # not UTF-8 JSON, a key twice, or not an object
    LINE_TOO_LONG = "line_too_long"
    INVALID_REQUEST = "invalid_request"  # a missing field, a wrong type or value
    UNKNOWN_FIELD = "unknown_field"  # a field OpenAI's format does not have (a typo?)
    UNSUPPORTED_FIELD = "unsupported_field"  # OpenAI's, but vlmq cannot honour it
    UNSUPPORTED_ENDPOINT = "unsupported_endpoint"
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
    INVALID_IMAGE = "invalid_image"
    TOO_MANY_IMAGES = "too_many_images"
    PLACEHOLDER_MISMATCH = "placeholder_mismatch"  # /vlmq/v1/generate: <image>s != images
    NO_CHAT_TEMPLATE = "no_chat_template"
    TEMPLATE_ERROR = "template_error"  # the model's chat template refused the messages


@dataclass(frozen=True, slots=True)
class LineError:
    """One bad line: why it will never be a job."""

    line: int  # 1-based, blank lines counted
    custom_id: str | None  # None when the line has no usable custom_id
    code: str  # a LineErrorCode's value
    message: str


class LineRefusedError(VlmqError):
    """Raised while a line is read; its reader turns it into the line's LineError."""

    def __init__(self, code: LineErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def optional_field(fields: dict[str, Any], key: str, kind: type, name: str, where: str) -> Any:
    """fields[key] if it is of `kind` (an int counts as a float; a bool as neither), None when
    left out or null; `name` says the kind in the message ("an integer")."""
    value = fields.get(key)
    if value is None:
        return None
    is_bool = isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, int | float) and not is_bool
    else:
        ok = isinstance(value, kind) and (kind is bool or not is_bool)
    if not ok:
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST, f"{where}{key} must be {name}, got {json_kind(value)}"
        )
    return value


def refuse_unknown(fields: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in fields:
        if key not in known:
            raise LineRefusedError(
                LineErrorCode.UNKNOWN_FIELD,
                f"{where}{field_name(key)} is not a field (known: {', '.join(known)})",
            )


def check_unicode(text: str, where: str) -> None:
    """Refuse a lone surrogate (JSON's "\\ud800"): it has no UTF-8, so no job could hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST,
            f"{where} is not valid Unicode (a lone surrogate at character {error.start})",
        ) from None


_JSON_KINDS = {
    type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
    list: "a list", dict: "an object",
}


def json_kind(value: object) -> str:
    """A JSON value's type, never the value (it may be megabytes)."""
    if isinstance(value, list | dict) and not value:
        return "an empty list" if isinstance(value, list) else "an empty object"
    return _JSON_KINDS.get(type(value), type(value).__name__)


def quoted(value: object) -> str:
    """A scalar as JSON, cut to 60 characters; anything else as its kind."""
    if not isinstance(value, str | int | float):
        return json_kind(value)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def field_name(key: str) -> str:
    return key if len(key) <= 64 else key[:63] + "…"
