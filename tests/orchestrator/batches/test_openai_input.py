"""OpenAI Batch input lines: good lines become jobs the queue takes, bad ones their line error."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.batches.chat_template import IMAGE_MARKERS, ChatTemplate
from orchestrator.batches.openai_input import (
    CHAT_ENDPOINT,
    GENERATE_ENDPOINT,
    MAX_CUSTOM_ID_CHARS,
    BatchRequest,
    LineError,
    LineErrorCode,
    parse_line,
    read_lines,
)
from orchestrator.image_ref import ImagePath, ImageURL
from orchestrator.job_limits import MAX_IMAGE_BYTES, MAX_IMAGES, MAX_PROMPT_BYTES
from orchestrator.queue.schema import JobSpec, decode_job, encode_job
from worker.sampling_params import SamplingParams
from worker.tiny.chat_templates import chat_template

SAMPLES = Path(__file__).resolve().parents[3] / "orchestrator" / "sample_images"
PNG = (SAMPLES / "sunset.png").read_bytes()
DATA_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
QWEN = ChatTemplate(
    chat_template("qwen2-vl"), {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    IMAGE_MARKERS["qwen2_vl"], False,
)
PIXTRAL = ChatTemplate(
    chat_template("pixtral"), {"bos_token": "<s>", "eos_token": "</s>"}, IMAGE_MARKERS["llava"],
    False,
)


def chat_line(custom_id: str = "req-1", **body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": [
        {"type": "text", "text": "Describe "},
        {"type": "image_url", "image_url": {"url": DATA_URI}},
    ]}])
    return {"custom_id": custom_id, "method": "POST", "url": CHAT_ENDPOINT, "body": body}


def raw_line(custom_id: str = "raw-1", **body: Any) -> dict[str, Any]:
    body.setdefault("prompt", "<|im_start|>user\n<image> and <image><|im_end|>\n")
    body.setdefault("images", ["http://127.0.0.1:9/a.png", "file:///data/b%20c.png"])
    return {"custom_id": custom_id, "method": "POST", "url": GENERATE_ENDPOINT, "body": body}


def parse(line: dict[str, Any] | bytes, template: ChatTemplate | None = QWEN
          ) -> BatchRequest | LineError:
    data = line if isinstance(line, bytes) else json.dumps(line).encode()
    return parse_line(7, data + b"\n", template)


def as_request(item: BatchRequest | LineError) -> BatchRequest:
    assert isinstance(item, BatchRequest), item
    # Whatever parses is a job the queue takes, and survives its wire format.
    spec = JobSpec("job", "q", item.prompt, item.images, item.sampling)
    assert decode_job(encode_job(spec)) == spec
    return item


def test_a_chat_line_becomes_its_templates_prompt() -> None:
    item = as_request(parse(chat_line(model="tiny", max_tokens=20, user="u", store=False)))
    assert item.line == 7 and item.custom_id == "req-1" and item.endpoint == CHAT_ENDPOINT
    assert item.prompt == QWEN.prompt_for(
        [{"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "image"}]}]
    )
    assert item.prompt.count("<image>") == 1
    assert item.images == (PNG,)
    assert item.image_keys == (hashlib.sha256(PNG).hexdigest(),)
    assert item.model == "tiny"
    # OpenAI's temperature default; SamplingParams' token budget where none is given.
    assert item.sampling == SamplingParams(max_new_tokens=20, temperature=1.0)
    assert as_request(parse(chat_line(model=None))).sampling.max_new_tokens == (
        SamplingParams().max_new_tokens
    )


def test_chat_messages_reach_the_template_as_a_processor_gives_them() -> None:
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be"},
                                          {"type": "text", "text": "brief."}]},
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": "Hello.", "tool_calls": [], "refusal": None},
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": DATA_URI, "detail": "low"}}]},
    ]
    item = as_request(parse(chat_line(messages=messages)))
    assert item.prompt == QWEN.prompt_for([
        {"role": "system", "content": "Be\nbrief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "image"}]},
    ])


def test_a_raw_line_keeps_its_prompt_and_references() -> None:
    item = as_request(parse(raw_line(
        temperature=0, top_p=0.5, top_k=-1, seed=3, stop="\n\n", max_completion_tokens=9,
        logprobs=False, presence_penalty=0, response_format={"type": "text"},
    ), template=None))
    assert item.prompt == "<|im_start|>user\n<image> and <image><|im_end|>\n"
    assert item.images == (ImageURL("http://127.0.0.1:9/a.png"), ImagePath("/data/b c.png"))
    assert item.image_keys == ("url:http://127.0.0.1:9/a.png", "path:/data/b c.png")
    assert item.sampling == SamplingParams(
        max_new_tokens=9, temperature=0.0, top_p=0.5, top_k=0, seed=3, stop_strings=("\n\n",)
    )
    plain = as_request(parse(raw_line(prompt="Just text.", images=None), template=None))
    assert plain.images == () and plain.image_keys == ()
    path = as_request(parse(raw_line(prompt="<image>", images=["photos/cat.jpg"])))
    assert path.images == (ImagePath("photos/cat.jpg"),)


def _messages(*content: Any, role: str = "user") -> list[dict[str, Any]]:
    return [{"role": role, "content": list(content)}]


_IMAGE_PART = {"type": "image_url", "image_url": {"url": DATA_URI}}


def _image_url(url: str) -> dict[str, Any]:
    return chat_line(messages=_messages({"type": "image_url", "image_url": {"url": url}}))


BAD_LINES: dict[str, tuple[dict[str, Any] | bytes, LineErrorCode]] = {
    "invalid json": (b"{not json", LineErrorCode.INVALID_JSON),
    "not an object": (b"[1, 2]", LineErrorCode.INVALID_JSON),
    "a key twice": (b'{"custom_id": "a", "custom_id": "b"}', LineErrorCode.INVALID_JSON),
    "not utf-8": (b'{"custom_id": "\xff"}', LineErrorCode.INVALID_JSON),
    "NaN": (b'{"custom_id": NaN}', LineErrorCode.INVALID_JSON),
    "nested too deep": (b"[" * 200_000, LineErrorCode.INVALID_JSON),
    "no custom_id": ({"method": "POST"}, LineErrorCode.INVALID_REQUEST),
    "custom_id a number": ({**chat_line(), "custom_id": 5}, LineErrorCode.INVALID_REQUEST),
    "custom_id empty": (chat_line(""), LineErrorCode.INVALID_REQUEST),
    "custom_id too long": (chat_line("x" * (MAX_CUSTOM_ID_CHARS + 1)),
                           LineErrorCode.INVALID_REQUEST),
    "custom_id a lone surrogate": (chat_line("\ud800"), LineErrorCode.INVALID_REQUEST),
    "no body": ({k: v for k, v in chat_line().items() if k != "body"},
                LineErrorCode.INVALID_REQUEST),
    "extra key": ({**chat_line(), "params": {}}, LineErrorCode.UNKNOWN_FIELD),
    "method GET": ({**chat_line(), "method": "GET"}, LineErrorCode.INVALID_REQUEST),
    "embeddings": ({**chat_line(), "url": "/v1/embeddings"}, LineErrorCode.UNSUPPORTED_ENDPOINT),
    "body a list": ({**chat_line(), "body": []}, LineErrorCode.INVALID_REQUEST),
    "unknown body field": (chat_line(temprature=0.5), LineErrorCode.UNKNOWN_FIELD),
    "unknown body field, null": (chat_line(temprature=None), LineErrorCode.UNKNOWN_FIELD),
    "n = 2": (chat_line(n=2), LineErrorCode.UNSUPPORTED_FIELD),
    "stream": (chat_line(stream=True), LineErrorCode.UNSUPPORTED_FIELD),
    "stream_options": (chat_line(stream_options={"include_usage": True}),
                       LineErrorCode.UNSUPPORTED_FIELD),
    "logprobs": (chat_line(logprobs=True), LineErrorCode.UNSUPPORTED_FIELD),
    "penalty": (chat_line(frequency_penalty=0.5), LineErrorCode.UNSUPPORTED_FIELD),
    "tools": (chat_line(tools=[{"type": "function"}]), LineErrorCode.UNSUPPORTED_FIELD),
    "json mode": (chat_line(response_format={"type": "json_object"}),
                  LineErrorCode.UNSUPPORTED_FIELD),
    "max_tokens a string": (chat_line(max_tokens="10"), LineErrorCode.INVALID_REQUEST),
    "max_tokens 0": (chat_line(max_tokens=0), LineErrorCode.INVALID_REQUEST),
    "max_tokens a bool": (chat_line(max_tokens=True), LineErrorCode.INVALID_REQUEST),
    "two budgets": (chat_line(max_tokens=5, max_completion_tokens=6),
                    LineErrorCode.INVALID_REQUEST),
    "temperature below 0.01": (chat_line(temperature=0.001), LineErrorCode.INVALID_REQUEST),
    "negative seed": (chat_line(seed=-1), LineErrorCode.INVALID_REQUEST),
    "stop not strings": (chat_line(stop=["a", 1]), LineErrorCode.INVALID_REQUEST),
    "model too long": (chat_line(model="m" * 300), LineErrorCode.INVALID_REQUEST),
    "no messages": (chat_line(messages=[]), LineErrorCode.INVALID_REQUEST),
    "message not an object": (chat_line(messages=["hi"]), LineErrorCode.INVALID_REQUEST),
    "tool role": (chat_line(messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]),
                  LineErrorCode.UNSUPPORTED_FIELD),
    "unknown role": (chat_line(messages=[{"role": "robot", "content": "x"}]),
                     LineErrorCode.INVALID_REQUEST),
    "unknown message field": (chat_line(messages=[{"role": "user", "content": "x", "id": 1}]),
                              LineErrorCode.UNKNOWN_FIELD),
    "unknown message field, null": (chat_line(messages=[{"role": "user", "content": "x",
                                                         "id": None}]),
                                    LineErrorCode.UNKNOWN_FIELD),
    "tool calls": (chat_line(messages=[{"role": "assistant", "content": "x",
                                        "tool_calls": [{"id": "1"}]}]),
                   LineErrorCode.UNSUPPORTED_FIELD),
    "no content": (chat_line(messages=[{"role": "user"}]), LineErrorCode.INVALID_REQUEST),
    "empty parts": (chat_line(messages=_messages()), LineErrorCode.INVALID_REQUEST),
    "video part": (chat_line(messages=_messages({"type": "video"})),
                   LineErrorCode.INVALID_REQUEST),
    "audio part": (chat_line(messages=_messages({"type": "input_audio"})),
                   LineErrorCode.UNSUPPORTED_FIELD),
    "text not a string": (chat_line(messages=_messages({"type": "text", "text": 3})),
                          LineErrorCode.INVALID_REQUEST),
    "image in a system message": (chat_line(messages=_messages(_IMAGE_PART, role="system")),
                                  LineErrorCode.INVALID_REQUEST),
    "image_url a string": (chat_line(messages=_messages({"type": "image_url",
                                                         "image_url": DATA_URI})),
                           LineErrorCode.INVALID_REQUEST),
    "bad detail": (chat_line(messages=_messages({"type": "image_url", "image_url": {
        "url": DATA_URI, "detail": "ultra"}})), LineErrorCode.INVALID_REQUEST),
    "bad base64": (_image_url("data:image/png;base64,iVBO$$$="), LineErrorCode.INVALID_IMAGE),
    "base64 without padding": (_image_url("data:image/png;base64,iVBORw"),
                               LineErrorCode.INVALID_IMAGE),
    "url-safe base64": (_image_url("data:image/png;base64,ab-_"), LineErrorCode.INVALID_IMAGE),
    "data URI of text": (_image_url("data:text/plain;base64,aGk="), LineErrorCode.INVALID_IMAGE),
    "data URI not base64": (_image_url("data:image/png,abc"), LineErrorCode.INVALID_IMAGE),
    "data URI without data": (_image_url("data:image/png;base64,"), LineErrorCode.INVALID_IMAGE),
    "data URI too large": (_image_url("data:image/png;base64," + "A" * (MAX_IMAGE_BYTES * 4 // 3
                                                                          + 8)),
                           LineErrorCode.INVALID_IMAGE),
    "ftp": (_image_url("ftp://127.0.0.1/a.png"), LineErrorCode.INVALID_IMAGE),
    "no host": (_image_url("http:///a.png"), LineErrorCode.INVALID_IMAGE),
    "space in url": (_image_url("http://127.0.0.1/a b.png"), LineErrorCode.INVALID_IMAGE),
    "file on another host": (_image_url("file://server/a.png"), LineErrorCode.INVALID_IMAGE),
    "NUL in path": (_image_url("images/a\x00.png"), LineErrorCode.INVALID_IMAGE),
    "empty url": (_image_url(""), LineErrorCode.INVALID_IMAGE),
    "url not a string": (chat_line(messages=_messages({"type": "image_url",
                                                       "image_url": {"url": 5}})),
                         LineErrorCode.INVALID_IMAGE),
    "url too long": (_image_url("http://127.0.0.1/" + "a" * 5000), LineErrorCode.INVALID_IMAGE),
    "too many images": (chat_line(messages=_messages(*[_IMAGE_PART] * (MAX_IMAGES + 1))),
                        LineErrorCode.TOO_MANY_IMAGES),
    "placeholder in the text": (chat_line(messages=_messages({"type": "text",
                                                              "text": "see <image>"})),
                                LineErrorCode.TEMPLATE_ERROR),
    "raw placeholders mismatch": (raw_line(prompt="<image> only"),
                                  LineErrorCode.PLACEHOLDER_MISMATCH),
    "raw images not a list": (raw_line(images="a.png"), LineErrorCode.INVALID_REQUEST),
    "raw prompt missing": (raw_line(prompt=None), LineErrorCode.INVALID_REQUEST),
    "raw prompt too long": (raw_line(prompt="x" * (MAX_PROMPT_BYTES + 1), images=[]),
                            LineErrorCode.INVALID_REQUEST),
    "raw body with messages": (raw_line(messages=[]), LineErrorCode.UNKNOWN_FIELD),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_each_bad_line_gets_its_code(case: str) -> None:
    line, code = BAD_LINES[case]
    item = parse(line)
    assert isinstance(item, LineError), item
    assert (item.line, item.code) == (7, code), item.message
    assert item.message
    # The error names its line's request, once the line has a usable custom_id.
    custom_id = line.get("custom_id") if isinstance(line, dict) else None
    assert item.custom_id == (None if "custom_id" in case else custom_id)


def test_chat_lines_need_a_template() -> None:
    item = parse(chat_line(), template=None)
    assert isinstance(item, LineError) and item.code == LineErrorCode.NO_CHAT_TEMPLATE
    assert item.custom_id == "req-1" and "/vlmq/v1/generate" in item.message


def test_a_template_that_refuses_the_conversation_is_a_template_error() -> None:
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    item = parse(chat_line(messages=twice), template=PIXTRAL)
    assert isinstance(item, LineError) and item.code == LineErrorCode.TEMPLATE_ERROR
    assert "roles must alternate" in item.message
    assert isinstance(parse(chat_line(messages=twice), template=QWEN), BatchRequest)


def _file(*lines: bytes) -> io.BytesIO:
    return io.BytesIO(b"".join(lines))


def test_a_file_reports_every_bad_line_and_reads_on() -> None:
    good = json.dumps(chat_line("a")).encode()
    stream = _file(
        b"\xef\xbb\xbf" + good + b"\r\n",  # a BOM and a Windows line end
        b"{oops\n",
        b"\n",
        b"   \t\n",
        json.dumps(raw_line("b")).encode() + b"\n",
        json.dumps(chat_line("a")).encode() + b"\n",  # the same custom_id again
        json.dumps(raw_line("long", prompt="x" * 5000, images=[])).encode() + b"\n",
        json.dumps(chat_line("c", n=3)).encode() + b"\n",
        json.dumps(raw_line("a")).encode() + b"\n",  # and again, on a line that is fine
        json.dumps(raw_line("last")).encode(),  # no newline at the end of the file
    )
    items = list(read_lines(stream, QWEN, max_line_bytes=4096))
    seen = [(i.line, i.custom_id, i.code if isinstance(i, LineError) else "ok") for i in items]
    assert seen == [
        (1, "a", "ok"),
        (2, None, LineErrorCode.INVALID_JSON),
        (5, "b", "ok"),
        (6, "a", LineErrorCode.DUPLICATE_CUSTOM_ID),
        (7, None, LineErrorCode.LINE_TOO_LONG),
        (8, "c", LineErrorCode.UNSUPPORTED_FIELD),
        (9, "a", LineErrorCode.DUPLICATE_CUSTOM_ID),
        (10, "last", "ok"),
    ]
    assert "line 1" in items[3].message  # type: ignore[union-attr]


def test_an_overlong_line_is_never_read_whole() -> None:
    class Counting(io.BytesIO):
        largest = 0

        def readline(self, size: int | None = -1) -> bytes:
            data = super().readline(size)
            Counting.largest = max(Counting.largest, len(data))
            return data

    huge = b"x" * (5 << 20)
    stream = Counting(huge + b"\n" + json.dumps(raw_line("after")).encode() + b"\n" + huge)
    items = list(read_lines(stream, None, max_line_bytes=64 << 10))
    assert [(i.line, i.code if isinstance(i, LineError) else "ok") for i in items] == [
        (1, LineErrorCode.LINE_TOO_LONG), (2, "ok"), (3, LineErrorCode.LINE_TOO_LONG),
    ]
    assert Counting.largest <= 1 << 20


def test_an_empty_file_has_no_lines() -> None:
    assert list(read_lines(_file(), QWEN)) == []
    assert list(read_lines(_file(b"\n\n"), QWEN)) == []
