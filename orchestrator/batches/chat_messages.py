"""OpenAI chat messages as a chat template takes them, and the images they hold, in order.

System and developer messages become the template's "system", and their text parts (like an
assistant's) one string, joined by newlines as vLLM joins them; a user's parts stay parts, text
as `{"type": "text", "text"}` and each image as `{"type": "image"}` (what a VLM's processor gives
its template). A message's `name` is accepted and not shown to the template. Tool and function
messages, tool calls and audio are refused: vlmq runs none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.batches.chat_template import ChatTemplate, ChatTemplateError
from orchestrator.batches.image_urls import line_image
from orchestrator.batches.line_errors import (
    LineErrorCode,
    LineRefusedError,
    json_kind,
    quoted,
    refuse_unknown,
)
from orchestrator.image_ref import ImageInput

ROLES: Mapping[str, str] = {
    "system": "system", "developer": "system", "user": "user", "assistant": "assistant",
}
MESSAGE_FIELDS = ("role", "content", "name")
DETAILS = ("auto", "low", "high")  # image_url.detail: accepted, and images are read as they are
# Message fields that mean tool use or audio: refused unless empty.
_NO_OP_ONLY: Mapping[str, Callable[[object], bool]] = {
    "tool_calls": lambda v: v == [],
    "function_call": lambda _: False,
    "audio": lambda _: False,
    "refusal": lambda _: False,
}


def chat_prompt(body: dict[str, Any], template: ChatTemplate) -> tuple[str, tuple[ImageInput, ...]]:
    """The prompt of body.messages, rendered by `template`, and its images."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST,
            f"body.messages must be a non-empty list, got {json_kind(messages)}",
        )
    images: list[ImageInput] = []
    chat = [
        _message(message, f"body.messages[{index}]", images)
        for index, message in enumerate(messages)
    ]
    try:
        return template.prompt_for(chat), tuple(images)
    except ChatTemplateError as error:
        raise LineRefusedError(LineErrorCode.TEMPLATE_ERROR, str(error)) from None


def _message(message: object, where: str, images: list[ImageInput]) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST, f"{where} must be an object, got {json_kind(message)}"
        )
    role = message.get("role")
    if role in ("tool", "function"):
        raise LineRefusedError(
            LineErrorCode.UNSUPPORTED_FIELD, f"{where}.role {role!r}: vlmq does not run tools"
        )
    if not isinstance(role, str) or role not in ROLES:
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST,
            f"{where}.role must be one of {', '.join(ROLES)}, got {quoted(role)}",
        )
    _check_fields(message, where)
    content = message.get("content")
    if isinstance(content, str):
        return {"role": ROLES[role], "content": content}
    if not isinstance(content, list) or not content:
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST,
            f"{where}.content must be a string or a non-empty list of parts, got "
            f"{json_kind(content)}",
        )
    is_user = role == "user"
    parts = [
        _part(part, f"{where}.content[{index}]", is_user, images)
        for index, part in enumerate(content)
    ]
    if not is_user:
        return {"role": ROLES[role], "content": "\n".join(part["text"] for part in parts)}
    return {"role": "user", "content": parts}


def _check_fields(message: dict[str, Any], where: str) -> None:
    for key, value in message.items():
        if key in MESSAGE_FIELDS:
            continue
        accepts = _NO_OP_ONLY.get(key)
        if accepts is None:
            refuse_unknown({key: value}, (*MESSAGE_FIELDS, *_NO_OP_ONLY), where + ".")
        elif value is not None and not accepts(value):
            raise LineRefusedError(
                LineErrorCode.UNSUPPORTED_FIELD, f"{where}.{key}: vlmq does not run tools or audio"
            )
    if not isinstance(message.get("name", ""), str | None):
        raise LineRefusedError(LineErrorCode.INVALID_REQUEST, f"{where}.name must be a string")


def _part(part: object, where: str, is_user: bool, images: list[ImageInput]) -> dict[str, str]:
    if not isinstance(part, dict):
        raise LineRefusedError(
            LineErrorCode.INVALID_REQUEST, f"{where} must be an object, got {json_kind(part)}"
        )
    kind = part.get("type")
    if kind == "text":
        refuse_unknown(part, ("type", "text"), where + ".")
        text = part.get("text")
        if not isinstance(text, str):
            raise LineRefusedError(
                LineErrorCode.INVALID_REQUEST,
                f"{where}.text must be a string, got {json_kind(text)}",
            )
        return {"type": "text", "text": text}
    if kind == "image_url":
        if not is_user:
            raise LineRefusedError(
                LineErrorCode.INVALID_REQUEST, f"{where}: only user messages hold images"
            )
        refuse_unknown(part, ("type", "image_url"), where + ".")
        image_url = part.get("image_url")
        if not isinstance(image_url, dict):
            raise LineRefusedError(
                LineErrorCode.INVALID_REQUEST,
                f'{where}.image_url must be an object {{"url": ...}}, got {json_kind(image_url)}',
            )
        refuse_unknown(image_url, ("url", "detail"), where + ".image_url.")
        if image_url.get("detail") not in (None, *DETAILS):
            raise LineRefusedError(
                LineErrorCode.INVALID_REQUEST,
                f"{where}.image_url.detail must be one of {', '.join(DETAILS)}, got "
                f"{quoted(image_url['detail'])}",
            )
        images.append(line_image(image_url.get("url"), f"{where}.image_url.url", len(images)))
        return {"type": "image"}
    if kind in ("input_audio", "file", "refusal"):
        raise LineRefusedError(
            LineErrorCode.UNSUPPORTED_FIELD, f"{where}: {kind} parts are not supported"
        )
    raise LineRefusedError(
        LineErrorCode.INVALID_REQUEST, f"{where}.type must be text or image_url, got {quoted(kind)}"
    )
