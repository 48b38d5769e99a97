"""The queue's wire format: a job's payload and its result, as versioned msgpack.

Each is one msgpack map with str keys, at schema version 1. A payload is untrusted, whoever
wrote it: decoding refuses whatever the schema does not name (unknown keys, other types, ext
types, trailing bytes) with an `InvalidPayloadError` naming the field, and lets no header make
it allocate more than the payload's own size. The dataclasses run the same checks when built,
so whatever can be built encodes, and decodes back equal.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import unicodedata
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import msgpack

from orchestrator.image_ref import MAX_IMAGE_REF_BYTES, ImageInput, ImagePath, ImageURL
from orchestrator.job_limits import (
    IMAGE_PLACEHOLDER,
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_JOB_ID_BYTES,
    MAX_PROMPT_BYTES,
)
from orchestrator.queue.states import JobState, Priority
from worker.errors import InvalidRequestError, JobError
from worker.sampling_params import SamplingParams

__all__ = [
    "ERROR_FIELDS",
    "FINISH_REASONS",
    "IMAGE_REF_FIELDS",
    "JOB_FIELDS",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_IMAGES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_REF_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_BYTES",
    "MAX_METADATA_STR_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_QUEUE_NAME_CHARS",
    "MAX_TOTAL_IMAGE_BYTES",
    "RESULT_FIELDS",
    "SAMPLING_FIELDS",
    "SCHEMA_VERSION",
    "TIMINGS_FIELDS",
    "ImagePath",
    "ImageURL",
    "InvalidPayloadError",
    "JobResult",
    "JobSpec",
    "JobState",
    "MetadataValue",
    "Priority",
    "ResultError",
    "ResultTimings",
    "decode_job",
    "decode_result",
    "encode_job",
    "encode_result",
]

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 << 20  # a job or a result, encoded; checked before unpacking
# Everything in a job but its images (prompt, stop strings, metadata, names) fits in 2 MiB, so
# images within this total keep every job that can be built under MAX_PAYLOAD_BYTES (a
# reference counts as its URL's or path's bytes: its map's few bytes fit in the 2 MiB).
MAX_TOTAL_IMAGE_BYTES = MAX_PAYLOAD_BYTES - 2 * MAX_PROMPT_BYTES
MAX_QUEUE_NAME_CHARS = 64
# Metadata rides along with the job and comes back with its result: labels, not data.
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_STR_BYTES = 4096
MAX_METADATA_BYTES = 16 << 10  # all of it, as encode_job packs it
MAX_ERROR_MESSAGE_CHARS = 4096
MAX_ERROR_TYPE_CHARS = 256
# worker.generation.FinishReason's values, spelled out: that module imports torch.
FINISH_REASONS = ("eos", "stop_string", "length")

MetadataValue: TypeAlias = str | int | float | bool | None

# The wire's keys, in the order encoders write them.
JOB_FIELDS = ("v", "job_id", "queue", "prompt", "images", "sampling", "priority", "metadata")
SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))
RESULT_FIELDS = (
    "v",
    "job_id",
    "state",
    "text",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "timings",
    "deliveries",
    "metadata",
    "error",
)
TIMINGS_FIELDS = ("queue_s", "run_s", "prefill_s", "decode_s")
# An image on the wire is bin (inline), or a map of exactly one of these: a reference.
IMAGE_REF_FIELDS = ("url", "path")
ERROR_FIELDS = ("type", "message", "job_fault")

_QUEUE_NAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_QUEUE_NAME_CHARS}}}")
_INT64 = (-(2**63), 2**63 - 1)  # what every msgpack reader can hold in a signed integer
_TERMINAL_STATES = tuple(state for state in JobState if state.is_terminal)
_PRIORITIES = "one of " + ", ".join(f"{p.value} ({p.name.lower()})" for p in Priority)
# Bounded reprs: a message may quote a hostile string, never all of it.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60

_T = TypeVar("_T")


class InvalidPayloadError(InvalidRequestError):
    """A job payload or result breaks the schema; `field` says where, e.g. "images[2]"."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[type[InvalidPayloadError], tuple[str, str]]:
        # Errors cross processes (Ray pickles them); rebuild with the constructor's arguments.
        return (type(self), (self.field, str(self)))


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job as the queue carries it; building one checks it as decoding would."""

    job_id: str  # 1 to 256 bytes of UTF-8, no whitespace or control characters: it names keys
    queue: str  # which model serves the job: 1 to 64 of [A-Za-z0-9_.-]
    prompt: str  # one IMAGE_PLACEHOLDER per image, in the order of `images`
    # Each encoded JPEG, PNG, WebP or GIF, or an ImageURL or ImagePath the serving side reads.
    images: tuple[ImageInput, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: Priority = Priority.NORMAL  # an int 0 to 2 is taken as its Priority
    metadata: dict[str, MetadataValue] = field(default_factory=dict)  # comes back with the result

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)
        _check_queue(self.queue)
        _check_text(self.prompt, "prompt", MAX_PROMPT_BYTES)
        _check_images(self.images)
        num_placeholders = self.prompt.count(IMAGE_PLACEHOLDER)
        if num_placeholders != len(self.images):
            raise _refuse(
                "prompt",
                f"has {num_placeholders} {IMAGE_PLACEHOLDER} placeholders for "
                f"{len(self.images)} images (one per image, in order)",
            )
        _check_sampling(self.sampling)
        object.__setattr__(self, "priority", _checked_priority(self.priority))
        # A copy: the caller's dict may change after it was checked.
        object.__setattr__(self, "metadata", _checked_metadata(self.metadata))


@dataclass(frozen=True, slots=True)
class ResultError:
    type: str  # the exception's class name, e.g. "CorruptImageError"
    message: str  # cut to MAX_ERROR_MESSAGE_CHARS, ending in "…", when built longer
    job_fault: bool  # the job's own input is at fault (a JobError): retrying cannot succeed

    def __post_init__(self) -> None:
        _check_text(self.type, "error.type", MAX_ERROR_TYPE_CHARS, min_bytes=1)
        message = _expect(self.message, str, "error.message")
        # An exception's text may hold a lone surrogate (a decoded file name); keep it readable.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
        object.__setattr__(self, "message", message)
        _expect(self.job_fault, bool, "error.job_fault")

    @classmethod
    def of(cls, error: BaseException) -> ResultError:
        """The result's account of `error`; a `JobError` is the job's own fault."""
        return cls(type(error).__name__, str(error), isinstance(error, JobError))


@dataclass(frozen=True, slots=True)
class ResultTimings:
    queue_s: float  # submitted until claimed
    run_s: float  # claimed until finished
    prefill_s: float  # 0.0 when unknown
    decode_s: float  # 0.0 when unknown

    def __post_init__(self) -> None:
        for name in TIMINGS_FIELDS:
            object.__setattr__(self, name, _seconds(getattr(self, name), f"timings.{name}"))


@dataclass(frozen=True, slots=True)
class JobResult:
    """A job's one result, written when it reached a terminal state."""

    job_id: str
    state: JobState  # a terminal one
    text: str | None  # set when succeeded (a failed job may keep partial text)
    finish_reason: str | None  # one of FINISH_REASONS, set exactly when succeeded
    prompt_tokens: int
    completion_tokens: int
    timings: ResultTimings
    deliveries: int  # times the job was handed to a worker; more than 1 after one died
    metadata: dict[str, MetadataValue]  # the job's own, given back
    error: ResultError | None  # why it did not succeed; a cancelled job may have none

    def __post_init__(self) -> None:
        _check_job_id(self.job_id)
        state = _checked_state(self.state)
        object.__setattr__(self, "state", state)
        if self.text is not None:
            _check_text(self.text, "text", MAX_PAYLOAD_BYTES)
        succeeded = state is JobState.SUCCEEDED
        if succeeded != (self.error is None and self.text is not None):
            has = f"{'no text' if self.text is None else 'text'} and "
            has += "no error" if self.error is None else "an error"
            raise _refuse(
                "state",
                f"{state.value!r} does not fit a result with {has} (a result has text and no "
                f"error exactly when it succeeded)",
            )
        _check_finish_reason(self.finish_reason, succeeded)
        for name in ("prompt_tokens", "completion_tokens", "deliveries"):
            _check_count(getattr(self, name), name)
        if not isinstance(self.timings, ResultTimings):
            raise _refuse("timings", f"must be a ResultTimings, got {_kind(self.timings)}")
        if self.error is not None and not isinstance(self.error, ResultError):
            raise _refuse("error", f"must be a ResultError or None, got {_kind(self.error)}")
        object.__setattr__(self, "metadata", _checked_metadata(self.metadata))


def encode_job(spec: JobSpec) -> bytes:
    """One msgpack map with every key of JOB_FIELDS."""
    if not isinstance(spec, JobSpec):
        raise _refuse("payload", f"encode_job takes a JobSpec, got {_kind(spec)}")
    JobSpec.__post_init__(spec)  # again: its metadata is a dict, which may have changed
    sampling = {name: getattr(spec.sampling, name) for name in SAMPLING_FIELDS}
    sampling["stop_strings"] = list(spec.sampling.stop_strings)
    return _pack(
        {
            "v": SCHEMA_VERSION,
            "job_id": spec.job_id,
            "queue": spec.queue,
            "prompt": spec.prompt,
            "images": [_image_to_wire(image) for image in spec.images],
            "sampling": sampling,
            "priority": int(spec.priority),
            "metadata": spec.metadata,
        }
    )


def decode_job(data: bytes) -> JobSpec:
    """The job in `data`; raises InvalidPayloadError, naming the field, for anything else.

    Optional keys (images, sampling and its keys, priority, metadata) take their defaults.
    """
    fields = _payload_fields(data, JOB_FIELDS)
    _require(fields, ("job_id", "queue", "prompt"), "")
    images = fields.get("images", [])
    return JobSpec(
        job_id=_expect(fields["job_id"], str, "job_id"),
        queue=_expect(fields["queue"], str, "queue"),
        prompt=_expect(fields["prompt"], str, "prompt"),
        images=tuple(
            _image_from_wire(item, f"images[{index}]")
            for index, item in enumerate(_expect(images, list, "images", "array of bin or map"))
        ),
        sampling=_sampling_from_wire(fields["sampling"])
        if "sampling" in fields
        else SamplingParams(),
        priority=_checked_priority(fields.get("priority", Priority.NORMAL)),
        metadata=_metadata_from_wire(fields),
    )


def encode_result(result: JobResult) -> bytes:
    """One msgpack map with every key of RESULT_FIELDS."""
    if not isinstance(result, JobResult):
        raise _refuse("payload", f"encode_result takes a JobResult, got {_kind(result)}")
    JobResult.__post_init__(result)  # again: its metadata is a dict, which may have changed
    error = result.error
    return _pack(
        {
            "v": SCHEMA_VERSION,
            "job_id": result.job_id,
            "state": result.state.value,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "timings": {name: getattr(result.timings, name) for name in TIMINGS_FIELDS},
            "deliveries": result.deliveries,
            "metadata": result.metadata,
            "error": None
            if error is None
            else {"type": error.type, "message": error.message, "job_fault": error.job_fault},
        }
    )


def decode_result(data: bytes) -> JobResult:
    """The result in `data`; every key of RESULT_FIELDS is required."""
    fields = _payload_fields(data, RESULT_FIELDS)
    _require(fields, RESULT_FIELDS, "")
    timings = _known_fields(fields["timings"], "timings", TIMINGS_FIELDS)
    _require(timings, TIMINGS_FIELDS, "timings.")
    return JobResult(
        job_id=_expect(fields["job_id"], str, "job_id"),
        state=_checked_state(_expect(fields["state"], str, "state")),
        text=_optional(fields["text"], str, "text"),
        finish_reason=_optional(fields["finish_reason"], str, "finish_reason"),
        prompt_tokens=_expect(fields["prompt_tokens"], int, "prompt_tokens"),
        completion_tokens=_expect(fields["completion_tokens"], int, "completion_tokens"),
        timings=ResultTimings(
            **{name: _seconds(timings[name], f"timings.{name}") for name in TIMINGS_FIELDS}
        ),
        deliveries=_expect(fields["deliveries"], int, "deliveries"),
        metadata=_metadata_from_wire(fields),
        error=None if fields["error"] is None else _error_from_wire(fields["error"]),
    )


# --- unpacking ------------------------------------------------------------------------------


class _WireMap:
    """A msgpack map as its raw pairs; its keys are checked where its field is known."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[object, object]]) -> None:
        self.pairs = pairs

    def __repr__(self) -> str:
        # Never the contents: a hostile map may nest a thousand deep or hold megabytes.
        return f"<msgpack map of {len(self.pairs)} pairs>"


def _unpack(data: object) -> object:
    if not isinstance(data, bytes):
        raise _refuse("payload", f"must be bytes, got {type(data).__name__}")
    size = len(data)
    if size > MAX_PAYLOAD_BYTES:
        raise _refuse("payload", f"is {size:,} bytes, over the limit of {MAX_PAYLOAD_BYTES:,}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,  # non-str keys are refused by _wire_map, naming the map
            object_pairs_hook=_WireMap,  # no dict yet: keys may be unhashable or repeated
            ext_hook=_refuse_ext,
            # Every element takes at least a byte (a map entry two): a header claiming more
            # than the payload holds is refused before anything is allocated for it.
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=size,
        )
    except msgpack.ExtraData:
        raise _refuse("payload", "has bytes after its msgpack value") from None
    except msgpack.StackError:
        raise _refuse("payload", "nests maps or arrays too deeply") from None
    except UnicodeDecodeError as error:
        raise _refuse("payload", f"holds a str that is not valid UTF-8 ({error.reason})") from None
    except (ValueError, TypeError) as error:
        detail = str(error) or type(error).__name__
        if "incomplete input" in detail:
            raise _refuse("payload", "is truncated msgpack (or empty)") from None
        raise _refuse("payload", f"is not valid msgpack ({detail})") from None


def _refuse_ext(code: int, data: bytes) -> object:
    raise _refuse("payload", f"holds msgpack ext type {code}, which the schema does not allow")


def _payload_fields(data: object, known: tuple[str, ...]) -> dict[str, object]:
    """The top-level map of `data`, its version checked before its keys (a v2 may add some)."""
    fields = _wire_map(_unpack(data), "payload")
    if "v" not in fields:
        raise _refuse(
            "v", f"missing: the schema version is required (this vlmq reads {SCHEMA_VERSION})"
        )
    version = _expect(fields["v"], int, "v")
    if version != SCHEMA_VERSION:
        raise _refuse(
            "v", f"schema version {version} is not supported (this vlmq reads {SCHEMA_VERSION})"
        )
    _refuse_unknown(fields, known, "")
    return fields


def _wire_map(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, _WireMap):
        raise _refuse(where, f"must be a map, got {_kind(value)}")
    fields: dict[str, object] = {}
    for key, item in value.pairs:
        if not isinstance(key, str):
            raise _refuse(where, f"map keys must be str, got {_kind(key)}")
        if key in fields:
            raise _refuse(where, f"key {_short.repr(key)} appears twice")
        fields[key] = item
    return fields


def _known_fields(value: object, where: str, known: tuple[str, ...]) -> dict[str, object]:
    fields = _wire_map(value, where)
    _refuse_unknown(fields, known, f"{where}.")
    return fields


def _refuse_unknown(fields: dict[str, object], known: tuple[str, ...], prefix: str) -> None:
    for key in fields:
        if key not in known:
            name = prefix + (key if len(key) <= 64 else key[:64] + "…")
            raise InvalidPayloadError(
                name, f"unknown field {_short.repr(prefix + key)} (known: {', '.join(known)})"
            )


def _require(fields: dict[str, object], names: tuple[str, ...], prefix: str) -> None:
    for name in names:
        if name not in fields:
            raise _refuse(prefix + name, "missing (required)")


def _sampling_from_wire(value: object) -> SamplingParams:
    fields = _known_fields(value, "sampling", SAMPLING_FIELDS)
    # Wire types first, so SamplingParams' messages (which quote values) only see numbers.
    kwargs: dict[str, Any] = {}
    for name, item in fields.items():
        where = f"sampling.{name}"
        if name == "stop_strings":
            strings = _expect(item, list, where, "array of str")
            kwargs[name] = tuple(_expect(s, str, f"{where}[{i}]") for i, s in enumerate(strings))
        elif name in ("temperature", "top_p"):
            kwargs[name] = _number(item, where)
        elif name == "seed":
            kwargs[name] = _optional(item, int, where)
        else:
            kwargs[name] = _expect(item, int, where)
    try:
        return SamplingParams(**kwargs)
    except InvalidRequestError as error:
        # Its checks are per field: find the first that fails alone, to name it.
        for name, item in kwargs.items():
            try:
                SamplingParams(**{name: item})
            except InvalidRequestError as alone:
                raise InvalidPayloadError(f"sampling.{name}", f"sampling.{alone}") from None
        raise _refuse("sampling", str(error)) from None


def _metadata_from_wire(fields: dict[str, object]) -> dict[str, MetadataValue]:
    if "metadata" not in fields:
        return {}
    return _checked_metadata(_wire_map(fields["metadata"], "metadata"))


def _image_from_wire(item: object, where: str) -> ImageInput:
    """Bin as it is; a map as its reference, whose text JobSpec then checks."""
    if isinstance(item, bytes):
        return item
    if not isinstance(item, _WireMap):
        raise _refuse(where, f"must be bin (bytes) or a map with one key, url or path; got "
                             f"{_kind(item)}")
    fields = _known_fields(item, where, IMAGE_REF_FIELDS)
    if len(fields) != 1:
        raise _refuse(
            where, f"a reference must have exactly one key, url or path; got {len(fields)}"
        )
    ((key, value),) = fields.items()
    text = _expect(value, str, f"{where}.{key}")
    return ImageURL(text) if key == "url" else ImagePath(text)


def _image_to_wire(image: ImageInput) -> bytes | dict[str, str]:
    if isinstance(image, ImageURL):
        return {"url": image.url}
    if isinstance(image, ImagePath):
        return {"path": image.path}
    return image


def _error_from_wire(value: object) -> ResultError:
    fields = _known_fields(value, "error", ERROR_FIELDS)
    _require(fields, ERROR_FIELDS, "error.")
    message = _expect(fields["message"], str, "error.message")
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        raise _refuse(
            "error.message",
            f"is {len(message):,} characters, over the limit of {MAX_ERROR_MESSAGE_CHARS:,}",
        )
    return ResultError(
        type=_expect(fields["type"], str, "error.type"),
        message=message,
        job_fault=_expect(fields["job_fault"], bool, "error.job_fault"),
    )


def _pack(payload: dict[str, object]) -> bytes:
    data: bytes = msgpack.packb(payload, use_bin_type=True)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise _refuse("payload", f"is {len(data):,} bytes, over the limit of {MAX_PAYLOAD_BYTES:,}")
    return data


# --- checks, shared by the constructors and the decoders -------------------------------------


def _refuse(field: str, detail: str) -> InvalidPayloadError:
    return InvalidPayloadError(field, f"{field}: {detail}")


_KIND_NAMES: dict[type, str] = {
    type(None): "nil",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bin",
    list: "array",
    tuple: "array",
    dict: "map",
    _WireMap: "map",
    msgpack.Timestamp: "timestamp (msgpack ext -1)",
}


def _kind(value: object) -> str:
    """A value's type as msgpack names it (writers may be in any language); never its value."""
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _expect(value: object, kind: type[_T], where: str, name: str | None = None) -> _T:
    """`value` if it is of `kind`; bool is no int here (True as a count is a writer's bug)."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _refuse(where, f"must be {name or _KIND_NAMES[kind]}, got {_kind(value)}")
    return value


def _number(value: object, where: str) -> int | float:
    """An int or a float: writers in other languages may send 0 for 0.0."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _refuse(where, f"must be float or int, got {_kind(value)}")
    return value


def _optional(value: object, kind: type[_T], where: str) -> _T | None:
    if value is None:
        return None
    return _expect(value, kind, where, f"{_KIND_NAMES[kind]} or nil")


def _check_text(
    text: object, where: str, max_bytes: int, min_bytes: int = 0, subject: str = ""
) -> str:
    """`text` if it is a str of valid Unicode, min_bytes to max_bytes in UTF-8.

    `subject` leads the message's detail when `where` alone does not say what (a map's key).
    """
    text = _expect(text, str, where)
    # Every character is at least one byte: a text this long is refused without encoding it.
    if len(text) > max_bytes:
        raise _refuse(
            where, f"{subject}is {len(text):,} characters, over the limit of {max_bytes:,} bytes"
        )
    try:
        num_bytes = len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        # Only a lone surrogate (half of a UTF-16 pair, e.g. from a JSON "\ud800") gets here.
        raise _refuse(
            where, f"{subject}is not valid Unicode: a lone surrogate at character {error.start:,}"
        ) from None
    if num_bytes > max_bytes:
        raise _refuse(
            where, f"{subject}is {num_bytes:,} bytes of UTF-8, over the limit of {max_bytes:,}"
        )
    if num_bytes < min_bytes:
        raise _refuse(where, f"{subject}must not be empty")
    return text


def _check_job_id(job_id: object) -> None:
    for index, char in enumerate(_check_text(job_id, "job_id", MAX_JOB_ID_BYTES, min_bytes=1)):
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf"):
            raise _refuse(
                "job_id",
                f"must hold no whitespace or control characters (it goes into Redis key "
                f"names), got {char!r} at character {index}",
            )


def _check_queue(queue: object) -> None:
    queue = _expect(queue, str, "queue")
    if not _QUEUE_NAME.fullmatch(queue):
        raise _refuse(
            "queue",
            f"must be 1 to {MAX_QUEUE_NAME_CHARS} characters of A-Z a-z 0-9 _ . -, "
            f"got {_short.repr(queue)}",
        )


def _check_images(images: object) -> None:
    if not isinstance(images, tuple):
        hint = " (one image? pass it as (data,))" if isinstance(images, bytes) else ""
        raise _refuse("images", f"must be a tuple of bytes, got {_kind(images)}{hint}")
    if len(images) > MAX_IMAGES:
        raise _refuse("images", f"{len(images)} images, over the limit of {MAX_IMAGES}")
    total = 0
    for index, image in enumerate(images):
        where = f"images[{index}]"
        if isinstance(image, ImageURL):
            total += _check_url(image.url, f"{where}.url")
        elif isinstance(image, ImagePath):
            path = _check_text(image.path, f"{where}.path", MAX_IMAGE_REF_BYTES, min_bytes=1)
            total += len(path.encode("utf-8"))
        elif isinstance(image, bytes):
            if not 1 <= len(image) <= MAX_IMAGE_BYTES:
                raise _refuse(where, f"is {len(image):,} bytes; must be 1 to {MAX_IMAGE_BYTES:,}")
            total += len(image)
        else:
            raise _refuse(
                where, f"must be bin (bytes), an ImageURL or an ImagePath, got {_kind(image)}"
            )
    if total > MAX_TOTAL_IMAGE_BYTES:
        raise _refuse(
            "images", f"{total:,} bytes in all, over the limit of {MAX_TOTAL_IMAGE_BYTES:,}"
        )


def _check_url(url: object, where: str) -> int:
    """The URL's size in bytes of UTF-8; refuses one that no fetch could take."""
    url = _check_text(url, where, MAX_IMAGE_REF_BYTES, min_bytes=1)
    if not url[:8].lower().startswith(("http://", "https://")):
        raise _refuse(where, f"must be an http:// or https:// URL, got {_short.repr(url)}")
    for index, char in enumerate(url):
        if char.isspace() or not char.isprintable():
            raise _refuse(
                where,
                f"must hold no whitespace or control characters (percent-encode them), got "
                f"{char!r} at character {index}",
            )
    return len(url.encode("utf-8"))


def _check_sampling(sampling: object) -> None:
    sampling = _expect(sampling, SamplingParams, "sampling", "a SamplingParams")
    try:
        # Built around its constructor, it was never checked; checked, this costs microseconds.
        SamplingParams.__post_init__(sampling)
    except InvalidRequestError as error:
        raise _refuse("sampling", str(error)) from None
    for index, stop in enumerate(sampling.stop_strings):
        _check_text(stop, f"sampling.stop_strings[{index}]", MAX_PAYLOAD_BYTES)


def _checked_priority(priority: object) -> Priority:
    number = _expect(priority, int, "priority")
    try:
        return Priority(number)
    except ValueError:
        raise _refuse("priority", f"must be {_PRIORITIES}, got {number}") from None


def _checked_state(state: object) -> JobState:
    value = _expect(state, str, "state")
    if value not in _TERMINAL_STATES:
        names = ", ".join(repr(s.value) for s in _TERMINAL_STATES)
        raise _refuse("state", f"must be a terminal state ({names}), got {_short.repr(str(value))}")
    return JobState(value)


def _check_finish_reason(reason: object, succeeded: bool) -> None:
    reason = _optional(reason, str, "finish_reason")
    if not succeeded:
        if reason is not None:
            raise _refuse(
                "finish_reason", f"must be nil unless the job succeeded, got {_short.repr(reason)}"
            )
    elif reason not in FINISH_REASONS:
        raise _refuse(
            "finish_reason",
            f"must be one of {', '.join(FINISH_REASONS)} for a job that succeeded, "
            f"got {_short.repr(reason)}",
        )


def _check_count(value: object, where: str) -> None:
    number = _expect(value, int, where)
    if not 0 <= number <= _INT64[1]:
        raise _refuse(where, f"must be in [0, {_INT64[1]}], got {number}")


def _seconds(value: object, where: str) -> float:
    number = float(_number(value, where))
    if not (math.isfinite(number) and number >= 0):
        raise _refuse(where, f"must be a finite number of seconds >= 0, got {number!r}")
    return number


def _checked_metadata(metadata: object) -> dict[str, MetadataValue]:
    if not isinstance(metadata, dict):
        raise _refuse("metadata", f"must be a map with str keys, got {_kind(metadata)}")
    if len(metadata) > MAX_METADATA_KEYS:
        raise _refuse(
            "metadata", f"has {len(metadata)} keys, over the limit of {MAX_METADATA_KEYS}"
        )
    checked: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise _refuse("metadata", f"keys must be str, got {_kind(key)}")
        subject = f"key {_short.repr(key)} "
        _check_text(key, "metadata", MAX_METADATA_KEY_BYTES, min_bytes=1, subject=subject)
        checked[key] = _metadata_value(value, f"metadata[{key!r}]")
    size = len(msgpack.packb(checked, use_bin_type=True))
    if size > MAX_METADATA_BYTES:
        raise _refuse(
            "metadata", f"is {size:,} bytes encoded, over the limit of {MAX_METADATA_BYTES:,}"
        )
    return checked


def _metadata_value(value: object, where: str) -> MetadataValue:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise _refuse(where, f"must fit in a signed 64-bit int, got {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _refuse(where, f"must be a finite float, got {value!r}")
        return value
    if isinstance(value, str):
        _check_text(value, where, MAX_METADATA_STR_BYTES)
        return value
    raise _refuse(where, f"must be nil, bool, int, float or str, got {_kind(value)}")
