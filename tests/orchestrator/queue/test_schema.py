"""The queue's wire schema: valid jobs and results round-trip exactly; anything else is an
`InvalidPayloadError` that names the field, whatever the bytes."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.job_limits import MAX_JOB_ID_BYTES, MAX_PROMPT_BYTES
from orchestrator.queue.schema import (
    ERROR_FIELDS,
    FINISH_REASONS,
    IMAGE_REF_FIELDS,
    JOB_FIELDS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_REF_BYTES,
    MAX_IMAGES,
    MAX_METADATA_BYTES,
    MAX_METADATA_KEYS,
    MAX_PAYLOAD_BYTES,
    MAX_TOTAL_IMAGE_BYTES,
    RESULT_FIELDS,
    SAMPLING_FIELDS,
    SCHEMA_VERSION,
    TIMINGS_FIELDS,
    ImagePath,
    ImageURL,
    InvalidPayloadError,
    JobResult,
    JobSpec,
    JobState,
    Priority,
    ResultError,
    ResultTimings,
    decode_job,
    decode_result,
    encode_job,
    encode_result,
)
from worker.errors import CorruptImageError, InvalidRequestError, JobError
from worker.sampling_params import SamplingParams

REPO = Path(__file__).resolve().parents[3]
PNG = b"\x89PNG\r\n\x1a\n"  # the schema does not judge image bytes; decoding does, later


def job_wire(**changes: Any) -> dict[str, Any]:
    """A valid job payload as a msgpack map, with `changes` made (a value of ... drops the key)."""
    payload: dict[str, Any] = {
        "v": 1,
        "job_id": "job-1",
        "queue": "default",
        "prompt": "Describe <image>",
        "images": [PNG],
        "sampling": {"max_new_tokens": 8, "temperature": 0.5, "seed": 7, "stop_strings": ["\n"]},
        "priority": 0,
        "metadata": {"row": 12, "source": "s3://bucket/a.png"},
    }
    payload.update(changes)
    return {key: value for key, value in payload.items() if value is not ...}


def sampling_wire(**changes: Any) -> dict[str, Any]:
    return job_wire(sampling={**job_wire()["sampling"], **changes})


def result_wire(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "v": 1,
        "job_id": "job-1",
        "state": "succeeded",
        "text": "a cat",
        "finish_reason": "eos",
        "prompt_tokens": 40,
        "completion_tokens": 3,
        "timings": {"queue_s": 0.5, "run_s": 1.25, "prefill_s": 0.25, "decode_s": 1.0},
        "deliveries": 1,
        "metadata": {"row": 12},
        "error": None,
    }
    payload.update(changes)
    return {key: value for key, value in payload.items() if value is not ...}


def failed_wire(**changes: Any) -> dict[str, Any]:
    error = {"type": "CorruptImageError", "message": "truncated", "job_fault": True}
    return result_wire(
        **{"state": "failed", "text": None, "finish_reason": None, "error": error, **changes}
    )


def pack(payload: object) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)  # type: ignore[no-any-return]


def raw_map(*pairs: tuple[bytes, bytes]) -> bytes:
    """A msgpack map from already packed keys and values: for what packb will not write."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(key + value for key, value in pairs)


def raw_payload(wire: dict[str, Any], **raw_values: bytes) -> bytes:
    """`wire` packed, with some of its values given as raw msgpack bytes instead."""
    fields = {key: pack(value) for key, value in wire.items()}
    fields.update(raw_values)
    return raw_map(*((pack(key), value) for key, value in fields.items()))


def raw_job(**raw_values: bytes) -> bytes:
    return raw_payload(job_wire(), **raw_values)


def refusal(decode: Any, data: bytes) -> InvalidPayloadError:
    with pytest.raises(InvalidPayloadError) as caught:
        decode(data)
    return caught.value


# --- round trips ---------------------------------------------------------------------------


def test_a_job_round_trips_field_for_field() -> None:
    spec = JobSpec(
        job_id="job-1",
        queue="qwen2-vl.7b",
        prompt="Compare <image> with <image>",
        images=(PNG, PNG + b"\x00"),
        sampling=SamplingParams(
            max_new_tokens=9,
            temperature=0.7,
            top_p=0.9,
            top_k=5,
            seed=2**64 - 1,
            stop_strings=("END",),
        ),
        priority=Priority.LOW,
        metadata={"n": -(2**63), "f": 0.25, "s": "é", "b": False, "none": None},
    )
    decoded = decode_job(encode_job(spec))
    assert decoded == spec
    assert decoded.priority is Priority.LOW
    assert decoded.sampling.stop_strings == ("END",)
    assert encode_job(decoded) == encode_job(spec)


def test_images_by_reference_round_trip_as_one_key_maps() -> None:
    images = (PNG, ImageURL("https://images.example/a.png?w=1"), ImagePath("cats/tabby.png"))
    spec = JobSpec("j", "q", "<image> <image> <image>", images)
    wire = msgpack.unpackb(encode_job(spec))
    assert wire["images"] == [
        PNG, {"url": "https://images.example/a.png?w=1"}, {"path": "cats/tabby.png"},
    ]
    assert IMAGE_REF_FIELDS == ("url", "path")
    assert decode_job(encode_job(spec)) == spec
    assert decode_job(encode_job(spec)).images[1] == ImageURL("https://images.example/a.png?w=1")
    longest = JobSpec("j", "q", "<image>", (ImagePath("é" * (MAX_IMAGE_REF_BYTES // 2)),))
    assert decode_job(encode_job(longest)) == longest


def test_a_payload_with_only_the_required_keys_takes_the_defaults() -> None:
    spec = decode_job(pack({"v": 1, "job_id": "j", "queue": "q", "prompt": "hi"}))
    assert spec == JobSpec("j", "q", "hi")
    assert (spec.images, spec.sampling, spec.priority, spec.metadata) == (
        (),
        SamplingParams(),
        Priority.NORMAL,
        {},
    )
    partial = decode_job(pack(job_wire(sampling={"top_k": 3})))
    assert partial.sampling == SamplingParams(top_k=3)


def test_encode_job_writes_exactly_the_documented_keys_in_order() -> None:
    wire = msgpack.unpackb(encode_job(JobSpec("j", "q", "hi")))
    assert tuple(wire) == JOB_FIELDS
    assert tuple(wire["sampling"]) == SAMPLING_FIELDS
    assert SAMPLING_FIELDS == (
        "max_new_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop_strings",
    )
    assert wire == {
        "v": SCHEMA_VERSION,
        "job_id": "j",
        "queue": "q",
        "prompt": "hi",
        "images": [],
        "sampling": {
            "max_new_tokens": 256,
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 0,
            "seed": None,
            "stop_strings": [],
        },
        "priority": 1,
        "metadata": {},
    }


def test_encode_result_writes_exactly_the_documented_keys_in_order() -> None:
    result = decode_result(pack(failed_wire()))
    wire = msgpack.unpackb(encode_result(result))
    assert tuple(wire) == RESULT_FIELDS
    assert tuple(wire["error"]) == ERROR_FIELDS
    assert tuple(wire["timings"]) == TIMINGS_FIELDS
    assert wire == failed_wire()


def test_finish_reasons_are_the_generators_own() -> None:
    from worker.generation import FinishReason  # imports torch: the schema must not

    assert tuple(reason.value for reason in FinishReason) == FINISH_REASONS


def test_image_limits_are_the_pipelines_defaults() -> None:
    from worker.images.decoding import ImageLimits  # imports Pillow: the schema must not

    assert (ImageLimits().max_images, ImageLimits().max_bytes) == (MAX_IMAGES, MAX_IMAGE_BYTES)


def test_the_schema_imports_neither_torch_nor_ray_nor_transformers() -> None:
    heavy = "sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules)"
    code = f"import orchestrator.queue.schema, sys; print({heavy})"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "[]"


job_ids = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=40,
).filter(lambda text: not any(char.isspace() for char in text))
metadata_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
metadata = st.dictionaries(st.text(min_size=1, max_size=20), metadata_values, max_size=8)
sampling = st.builds(
    SamplingParams,
    max_new_tokens=st.integers(1, 2**40),
    temperature=st.just(0.0) | st.floats(0.01, 100.0),
    top_p=st.floats(1e-6, 1.0),
    top_k=st.integers(0, 2**31 - 1),
    seed=st.none() | st.integers(0, 2**64 - 1),
    stop_strings=st.lists(st.text(min_size=1, max_size=12), max_size=4).map(tuple),
)


@st.composite
def job_specs(draw: st.DrawFn) -> JobSpec:
    images = draw(st.lists(
        st.binary(min_size=1, max_size=48)
        | st.builds(ImageURL, st.sampled_from(("http://", "HTTPS://")).map(
            lambda scheme: scheme + "images.example/a.png"))
        | st.builds(ImagePath, st.text(min_size=1, max_size=30)),
        max_size=4,
    ))
    pieces = draw(
        st.lists(st.text(max_size=20), min_size=len(images) + 1, max_size=len(images) + 1)
    )
    # A "<image>" can only form inside a piece: each placeholder begins with the only "<" in it.
    pieces = [piece.replace("<image>", "<img>") for piece in pieces]
    return JobSpec(
        job_id=draw(job_ids),
        queue=draw(st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)),
        prompt="<image>".join(pieces),
        images=tuple(images),
        sampling=draw(sampling),
        priority=draw(st.sampled_from(Priority)),
        metadata=draw(metadata),
    )


@settings(max_examples=300, deadline=None)
@given(job_specs())
def test_random_valid_jobs_round_trip_exactly(spec: JobSpec) -> None:
    data = encode_job(spec)
    assert decode_job(data) == spec
    assert encode_job(decode_job(data)) == data


seconds = st.floats(0.0, 1e9) | st.integers(0, 10**9)
result_timings = st.builds(ResultTimings, seconds, seconds, seconds, seconds)
counts = st.integers(0, 2**63 - 1)
errors = st.builds(
    ResultError, st.text(min_size=1, max_size=40), st.text(max_size=200), st.booleans()
)


@st.composite
def job_results(draw: st.DrawFn) -> JobResult:
    state = draw(st.sampled_from([s for s in JobState if s.is_terminal]))
    if state is JobState.SUCCEEDED:
        text: str | None = draw(st.text(max_size=100))
        reason = draw(st.sampled_from(FINISH_REASONS))
        error: ResultError | None = None
    else:
        text, reason = draw(st.none() | st.text(max_size=100)), None
        # Only a result with no text may lack an error (a job cancelled before it ran).
        error = draw(errors if text is not None else st.none() | errors)
    return JobResult(
        job_id=draw(job_ids),
        state=state,
        text=text,
        finish_reason=reason,
        prompt_tokens=draw(counts),
        completion_tokens=draw(counts),
        timings=draw(result_timings),
        deliveries=draw(st.integers(0, 1000)),
        metadata=draw(metadata),
        error=error,
    )


@settings(max_examples=300, deadline=None)
@given(job_results())
def test_random_valid_results_round_trip_exactly(result: JobResult) -> None:
    data = encode_result(result)
    assert decode_result(data) == result
    assert encode_result(decode_result(data)) == data


def test_timings_written_as_ints_decode_as_floats() -> None:
    wire = result_wire(timings={"queue_s": 1, "run_s": 2, "prefill_s": 0, "decode_s": 0})
    decoded = decode_result(pack(wire)).timings
    assert decoded == ResultTimings(1.0, 2.0, 0.0, 0.0)
    assert all(type(getattr(decoded, name)) is float for name in TIMINGS_FIELDS)


# --- refusals: decoding --------------------------------------------------------------------


def job(**changes: Any) -> bytes:
    return pack(job_wire(**changes))


def sampled(**changes: Any) -> bytes:
    return pack(sampling_wire(**changes))


def with_key(key: object) -> bytes:
    wire: dict[object, object] = {key: 1}
    wire.update(job_wire())
    return pack(wire)


def meta(value: object) -> bytes:
    return pack(job_wire(metadata={"k": value}))


# field named -> (case, payload, words the message must hold)
HOSTILE_JOBS: dict[str, list[tuple[str, bytes, str]]] = {
    "payload": [
        ("not msgpack", b"\xc1", "not valid msgpack"),
        ("empty", b"", "truncated"),
        ("truncated", job()[:-3], "truncated"),
        ("trailing bytes", job() + b"\xc0", "bytes after its msgpack value"),
        ("two payloads", job() * 2, "bytes after its msgpack value"),
        ("an array", pack([1, 2]), "must be a map, got array"),
        ("a str", pack("job"), "must be a map, got str"),
        ("nil", pack(None), "must be a map, got nil"),
        ("an int key", with_key(3), "map keys must be str, got int"),
        ("a bin key", with_key(b"v"), "map keys must be str, got bin"),
        ("an array key", raw_map((b"\x91\x01", b"\x01")), "map keys must be str, got array"),
        ("a map key", raw_map((b"\x81\x01\x01", b"\x01")), "map keys must be str, got map"),
        ("a key twice", raw_map((pack("v"), pack(1)), (pack("v"), pack(1))), "'v' appears twice"),
        ("an ext type", meta(msgpack.ExtType(5, b"x")), "ext type 5"),
        ("only an ext type", pack(msgpack.ExtType(1, b"")), "ext type 1"),
        ("invalid UTF-8 in the prompt", raw_job(prompt=b"\xa3\xff\xfe\xfd"), "not valid UTF-8"),
        ("invalid UTF-8 in a key", raw_map((b"\xa2\xc3\x28", pack(1))), "not valid UTF-8"),
        ("an encoded surrogate", raw_job(prompt=b"\xa3\xed\xa0\x80"), "not valid UTF-8"),
        ("maps 10,000 deep", raw_job(metadata=b"\x81\xa1k" * 10_000 + b"\xc0"), "too deeply"),
        ("arrays 100,000 deep", b"\x91" * 100_000 + b"\xc0", "nests maps or arrays too deeply"),
        ("an array header past the end", b"\xdd\xff\xff\xff\xff", "exceeds max_array_len(5)"),
        ("a map header past the end", b"\xdf\xff\xff\xff\xff\x01", "exceeds max_map_len(3)"),
        ("a bin header past the end", raw_job(images=b"\x91\xc6\xff\xff\xff\xff"), "truncated"),
        ("a str header past the end", raw_job(prompt=b"\xdb\x7f\xff\xff\xff"), "truncated"),
    ],
    "prio": [("an unknown key", job(prio=0), "unknown field 'prio' (known: v, job_id,")],
    "sampling.temp": [("an unknown key", sampled(temp=1.0), "unknown field 'sampling.temp'")],
    "v": [
        ("missing", job(v=...), "missing"),
        ("2", job(v=2), "v: schema version 2 is not supported (this vlmq reads 1)"),
        ("0", job(v=0), "schema version 0 is not supported"),
        ("a str", job(v="1"), "must be int, got str"),
        ("a bool", job(v=True), "must be int, got bool"),
        ("2 with keys of its own", job(v=2, deadline=5), "schema version 2"),
        ("a timestamp", job(v=msgpack.Timestamp(1, 0)), "got timestamp (msgpack ext -1)"),
    ],
    "job_id": [
        ("missing", job(job_id=...), "missing (required)"),
        ("an int", job(job_id=5), "must be str, got int"),
        ("a bin", job(job_id=b"j"), "must be str, got bin"),
        ("empty", job(job_id=""), "must not be empty"),
        ("too long", job(job_id="j" * (MAX_JOB_ID_BYTES + 1)), "257 characters"),
        ("too many bytes", job(job_id="é" * 129), "258 bytes of UTF-8"),
        ("a space", job(job_id="a b"), "no whitespace or control"),
        ("a newline", job(job_id="a\nb"), "'\\n' at character 1"),
        ("NUL", job(job_id="a\x00"), "no whitespace or control"),
        ("a zero-width space", job(job_id="a\u200b"), "control"),
    ],
    "queue": [
        ("missing", job(queue=...), "missing (required)"),
        ("an int", job(queue=1), "must be str, got int"),
        ("empty", job(queue=""), "must be 1 to 64 characters"),
        ("too long", job(queue="q" * 65), "must be 1 to 64 characters"),
        ("a slash", job(queue="a/b"), "got 'a/b'"),
        ("not ASCII", job(queue="modèle"), "A-Z a-z 0-9 _ . -"),
        ("a newline at its end", job(queue="q\n"), "must be 1 to 64"),
    ],
    "prompt": [
        ("missing", job(prompt=...), "missing (required)"),
        ("a bin", job(prompt=b"Describe <image>"), "must be str, got bin"),
        ("nil", job(prompt=None), "must be str, got nil"),
        ("too long", job(prompt="<image>" + "x" * MAX_PROMPT_BYTES), "over the limit of 1,048,576"),
        ("too many bytes", job(prompt="<image>" + "é" * (MAX_PROMPT_BYTES // 2)), "of UTF-8, over"),
        ("a placeholder too many", job(prompt="<image> <image>"), "2 <image> placeholders for 1"),
        ("no placeholder", job(prompt="Describe"), "0 <image> placeholders for 1 images"),
    ],
    "images": [
        ("a bin", job(images=PNG), "must be array of bin or map, got bin"),
        ("a map", job(images={"0": PNG}), "must be array of bin or map, got map"),
        ("17", job(prompt="<image>" * 17, images=[PNG] * 17), "17 images, over the limit of 16"),
        (
            "too large in all",
            job(prompt="<image>" * 4, images=[bytes(MAX_TOTAL_IMAGE_BYTES // 4 + 1)] * 4),
            "bytes in all, over the limit of 65,011,712",
        ),
    ],
    "images[0]": [
        ("a str", job(images=["iVBOR"]), "must be bin (bytes) or a map with one key"),
        ("an int", job(images=[7]), "url or path; got int"),
        ("an empty map", job(images=[{}]), "exactly one key, url or path; got 0"),
        ("both keys", job(images=[{"url": "http://a/", "path": "a"}]), "exactly one key"),
        ("a bin key", job(images=[{b"url": "http://a/"}]), "map keys must be str, got bin"),
        ("empty", job(images=[b""]), "is 0 bytes; must be 1 to"),
        ("too large", job(images=[bytes(MAX_IMAGE_BYTES + 1)]), "20,971,521 bytes"),
    ],
    "images[1]": [("nil", job(prompt="<image><image>", images=[PNG, None]), "got nil")],
    "images[0].size": [
        ("an unknown key", job(images=[{"size": 5}]), "unknown field 'images[0].size' (known:")
    ],
    "images[0].url": [
        ("a bin", job(images=[{"url": b"http://a/"}]), "must be str, got bin"),
        ("empty", job(images=[{"url": ""}]), "must not be empty"),
        ("too long", job(images=[{"url": "http://a/" + "x" * MAX_IMAGE_REF_BYTES}]), "over the"),
        ("ftp", job(images=[{"url": "ftp://a/b.png"}]), "must be an http:// or https:// URL"),
        ("no scheme", job(images=[{"url": "images.example/a.png"}]), "http:// or https://"),
        ("a data URI", job(images=[{"url": "data:image/png;base64,iVBO"}]), "http:// or"),
        ("a space", job(images=[{"url": "http://a/b c.png"}]), "' ' at character 10"),
        ("a newline", job(images=[{"url": "http://a/\nHost: b"}]), "control characters"),
    ],
    "images[0].path": [
        ("nil", job(images=[{"path": None}]), "must be str, got nil"),
        ("empty", job(images=[{"path": ""}]), "must not be empty"),
        ("too many bytes", job(images=[{"path": "é" * 2049}]), "4,098 bytes of UTF-8, over"),
    ],
    "sampling": [
        ("an array", job(sampling=[8]), "must be a map, got array"),
        ("an int key", job(sampling={1: 8}), "map keys must be str, got int"),
    ],
    "sampling.max_new_tokens": [
        ("a bool", sampled(max_new_tokens=True), "must be int, got bool"),
        ("a float", sampled(max_new_tokens=8.0), "must be int, got float"),
        ("zero", sampled(max_new_tokens=0), "sampling.max_new_tokens must be >= 1, got 0"),
    ],
    "sampling.temperature": [
        ("a str", sampled(temperature="0.5"), "must be float or int, got str"),
        ("a bool", sampled(temperature=False), "got bool"),
        ("too high", sampled(temperature=1e6), "must be 0 (greedy) or a finite number"),
        ("NaN", sampled(temperature=math.nan), "got nan"),
    ],
    "sampling.top_p": [("zero", sampled(top_p=0.0), "in [1e-06, 1]")],
    "sampling.top_k": [("negative", sampled(top_k=-1), "in [0, 2147483647]")],
    "sampling.seed": [
        ("a str", sampled(seed="7"), "must be int or nil, got str"),
        ("negative", sampled(seed=-1), "must be in [0, 18446744073709551615]"),
    ],
    "sampling.stop_strings": [
        ("a str", sampled(stop_strings="\n"), "must be array of str, got str"),
        (
            "an empty one",
            sampled(stop_strings=[""]),
            "stop_strings[0] must have 1 to 256 characters",
        ),
        ("17", sampled(stop_strings=["a"] * 17), "at most 16, got 17"),
    ],
    "sampling.stop_strings[1]": [("a bin", sampled(stop_strings=["a", b"b"]), "got bin")],
    "priority": [
        ("a bool", job(priority=True), "must be int, got bool"),
        ("a str", job(priority="high"), "must be int, got str"),
        ("out of range", job(priority=3), "one of 0 (high), 1 (normal), 2 (low), got 3"),
    ],
    "metadata": [
        ("an array", job(metadata=[1]), "must be a map, got array"),
        ("an int key", job(metadata={1: "a"}), "map keys must be str, got int"),
        ("an empty key", job(metadata={"": 1}), "key '' must not be empty"),
        ("a key too long", job(metadata={"k" * 129: 1}), "129 characters, over the limit of 128"),
        ("65 keys", job(metadata=dict.fromkeys(map(str, range(MAX_METADATA_KEYS + 1)))), "65 keys"),
        (
            "too large in all",
            job(metadata={str(i): "x" * 4000 for i in range(5)}),
            "bytes encoded, over the limit of 16,384",
        ),
    ],
    "metadata['k']": [
        ("a map", meta({"a": 1}), "got map"),
        ("an array", meta([1]), "must be nil, bool, int, float or str, got array"),
        ("a bin", meta(b"x"), "got bin"),
        ("past int64", meta(2**63), "signed 64-bit int"),
        ("NaN", meta(math.nan), "finite float, got nan"),
        ("-inf", meta(-math.inf), "finite float, got -inf"),
        ("a long str", meta("x" * 4097), "over the limit of 4,096"),
        ("a timestamp", meta(msgpack.Timestamp(0, 1)), "got timestamp (msgpack ext -1)"),
        ("maps 500 deep", raw_job(metadata=b"\x81\xa1k" * 500 + b"\xc0"), "got map"),
    ],
}


def cases(table: dict[str, list[tuple[str, bytes, str]]]) -> list[Any]:
    return [
        pytest.param(data, field, words, id=f"{field}: {case}")
        for field, rows in table.items()
        for case, data, words in rows
    ]


@pytest.mark.parametrize(("data", "field", "words"), cases(HOSTILE_JOBS))
def test_decode_job_refuses_hostile_payloads_naming_the_field(
    data: bytes, field: str, words: str
) -> None:
    error = refusal(decode_job, data)
    assert error.field == field
    assert words in str(error)
    # Every message leads with what it is about, so a log line alone says where to look.
    assert str(error).startswith((f"{field}:", f"{field} ", f"{field}[", "unknown field"))


def test_the_valid_payload_the_table_bends_decodes() -> None:
    spec = decode_job(pack(job_wire()))
    assert spec.sampling == SamplingParams(
        max_new_tokens=8, temperature=0.5, seed=7, stop_strings=("\n",)
    )
    assert (spec.priority, spec.metadata) == (
        Priority.HIGH,
        {"row": 12, "source": "s3://bucket/a.png"},
    )
    assert decode_job(raw_job()) == spec


def test_decode_job_refuses_what_is_not_bytes() -> None:
    for value in ("text", bytearray(pack(job_wire())), memoryview(pack(job_wire())), None):
        error = refusal(decode_job, value)  # type: ignore[arg-type]
        assert error.field == "payload"
        assert f"must be bytes, got {type(value).__name__}" in str(error)


def test_a_payload_over_the_limit_is_refused_by_its_size_before_unpacking() -> None:
    # nil then filler: unpacked, it would be "bytes after its msgpack value".
    error = refusal(decode_job, b"\xc0" * (MAX_PAYLOAD_BYTES + 1))
    assert (error.field, str(error)) == (
        "payload",
        f"payload: is {MAX_PAYLOAD_BYTES + 1:,} bytes, over the limit of {MAX_PAYLOAD_BYTES:,}",
    )


def test_the_largest_job_that_can_be_built_fits_in_a_payload() -> None:
    images = (b"\x00" * MAX_IMAGE_BYTES,) * (MAX_TOTAL_IMAGE_BYTES // MAX_IMAGE_BYTES)
    spec = JobSpec(
        "j" * MAX_JOB_ID_BYTES,
        "q" * 64,
        "<image>" * len(images) + "x" * (MAX_PROMPT_BYTES - 7 * len(images)),
        images,
        SamplingParams(stop_strings=("\U0001f600" * 256,) * 16),
        # 64 entries of 130 + 122 bytes packed, and a map header of 3: 16,131 bytes.
        metadata={f"{i:0128d}": "x" * 120 for i in range(64)},
    )
    assert MAX_METADATA_BYTES - 256 < len(pack(spec.metadata)) <= MAX_METADATA_BYTES
    data = encode_job(spec)
    assert len(data) <= MAX_PAYLOAD_BYTES
    assert decode_job(data) == spec


def res(**changes: Any) -> bytes:
    return pack(result_wire(**changes))


def fail(**changes: Any) -> bytes:
    return pack(failed_wire(**changes))


def timed(**changes: Any) -> bytes:
    timings = {**result_wire()["timings"], **changes}
    return res(timings={name: value for name, value in timings.items() if value is not ...})


def failed_with(**changes: Any) -> bytes:
    error = {**failed_wire()["error"], **changes}
    return fail(error={name: value for name, value in error.items() if value is not ...})


HOSTILE_RESULTS: dict[str, list[tuple[str, bytes, str]]] = {
    "payload": [
        ("10,000 deep", b"\x81\xa1v" * 10_000 + b"\x01", "too deeply"),
        ("trailing bytes", res() + b"\x00", "bytes after its msgpack value"),
        ("truncated", res()[:-1], "truncated"),
        ("an ext type", res(metadata={"k": msgpack.ExtType(9, b"")}), "ext type 9"),
        ("invalid UTF-8", raw_payload(result_wire(), text=b"\xa3\xff\x00\x00"), "not valid UTF-8"),
    ],
    "v": [
        ("missing", res(v=...), "missing"),
        ("2", res(v=2), "schema version 2 is not supported"),
    ],
    "attempts": [("an unknown key", res(attempts=1), "unknown field 'attempts'")],
    "queue": [("a job's payload", job(), "unknown field 'queue'")],
    "text": [
        ("missing", res(text=...), "missing (required)"),
        ("a bin", res(text=b"a cat"), "must be str or nil, got bin"),
    ],
    "error": [
        ("missing", res(error=...), "missing (required)"),
        ("a str", fail(error="boom"), "must be a map, got str"),
    ],
    "state": [
        ("not terminal", res(state="running"), "must be a terminal state"),
        ("unknown", res(state="done"), "got 'done'"),
        ("an int", res(state=2), "must be str, got int"),
        (
            "succeeded without text",
            res(text=None),
            "'succeeded' does not fit a result with no text",
        ),
        ("succeeded with an error", fail(state="succeeded", text="a"), "with text and an error"),
        ("failed with text, no error", res(state="failed"), "'failed' does not fit"),
    ],
    "finish_reason": [
        ("unknown", res(finish_reason="stop"), "must be one of eos, stop_string, length"),
        ("missing on success", res(finish_reason=None), "got None"),
        ("set on failure", fail(finish_reason="length"), "must be nil unless the job succeeded"),
    ],
    "prompt_tokens": [("a bool", res(prompt_tokens=True), "must be int, got bool")],
    "completion_tokens": [("negative", res(completion_tokens=-1), "must be in [0,")],
    "deliveries": [
        ("a float", res(deliveries=1.0), "must be int, got float"),
        ("past int64", res(deliveries=2**64 - 1), "must be in [0, 9223372036854775807]"),
    ],
    "timings": [("an array", res(timings=[0, 0, 0, 0]), "must be a map, got array")],
    "timings.decode_s": [("missing", timed(decode_s=...), "missing")],
    "timings.wait_s": [("unknown", timed(wait_s=0), "unknown field")],
    "timings.run_s": [
        ("negative", timed(run_s=-1.0), ">= 0, got -1.0"),
        ("infinite", timed(run_s=math.inf), "got inf"),
        ("a str", timed(run_s="1"), "must be float or int, got str"),
    ],
    "error.job_fault": [
        ("missing", failed_with(job_fault=...), "missing"),
        ("an int", failed_with(job_fault=1), "must be bool, got int"),
    ],
    "error.trace": [("unknown", failed_with(trace=""), "unknown field")],
    "error.type": [("empty", failed_with(type=""), "must not be empty")],
    "error.message": [("too long", failed_with(message="m" * 4097), "4,097 characters, over")],
    "metadata['k']": [("a map", res(metadata={"k": {}}), "got map")],
}


@pytest.mark.parametrize(("data", "field", "words"), cases(HOSTILE_RESULTS))
def test_decode_result_refuses_hostile_payloads_naming_the_field(
    data: bytes, field: str, words: str
) -> None:
    error = refusal(decode_result, data)
    assert error.field == field
    assert words in str(error)


def test_a_result_without_text_or_error_may_be_cancelled_or_dead_not_succeeded() -> None:
    for state in ("cancelled", "dead", "failed"):
        wire = result_wire(state=state, text=None, finish_reason=None)
        assert decode_result(pack(wire)).state is JobState(state)
    assert refusal(decode_result, pack(result_wire(text=None, finish_reason=None))).field == "state"


# --- fuzz ----------------------------------------------------------------------------------


def decodes_or_is_refused(decode: Any, data: bytes) -> None:
    """`decode` either returns or raises InvalidPayloadError; any other exception fails."""
    try:
        decode(data)
    except InvalidPayloadError as error:
        assert str(error).strip()
        assert error.field


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_only_ever_refused_with_invalid_payload_error(data: bytes) -> None:
    decodes_or_is_refused(decode_job, data)
    decodes_or_is_refused(decode_result, data)


wire_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can hold
wire_values = st.recursive(
    st.none()
    | st.booleans()
    | wire_ints
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | wire_ints, children, max_size=4)
    ),
    max_leaves=12,
)


JOB_PLACES = [("job", name) for name in (*JOB_FIELDS, "extra")] + [
    ("sampling", name) for name in (*SAMPLING_FIELDS, "extra")
]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(JOB_PLACES), wire_values)
def test_any_value_in_any_job_field_decodes_or_is_refused(
    place: tuple[str, str], value: object
) -> None:
    where, name = place
    wire = job_wire(**{name: value}) if where == "job" else sampling_wire(**{name: value})
    decodes_or_is_refused(decode_job, pack(wire))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from((*RESULT_FIELDS, "extra")), wire_values)
def test_any_value_in_any_result_field_decodes_or_is_refused(name: str, value: object) -> None:
    decodes_or_is_refused(decode_result, pack(result_wire(**{name: value})))
    decodes_or_is_refused(decode_result, pack(failed_wire(**{name: value})))


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_a_valid_payload_with_bytes_changed_decodes_or_is_refused(data: st.DataObject) -> None:
    for decode, payload in ((decode_job, pack(job_wire())), (decode_result, pack(failed_wire()))):
        changed = bytearray(payload)
        for _ in range(data.draw(st.integers(1, 4))):
            changed[data.draw(st.integers(0, len(changed) - 1))] = data.draw(st.integers(0, 255))
        decodes_or_is_refused(decode, bytes(changed))


# --- refusals: construction ----------------------------------------------------------------


def job_fields(**changes: Any) -> dict[str, Any]:
    return {"job_id": "j", "queue": "q", "prompt": "<image>", "images": (PNG,), **changes}


BAD_SPECS: list[tuple[dict[str, Any], str, str]] = [
    (job_fields(job_id=7), "job_id", "job_id: must be str, got int"),
    (job_fields(job_id="a\tb"), "job_id", "'\\t' at character 1"),
    (job_fields(queue=None), "queue", "queue: must be str, got nil"),
    (
        job_fields(prompt="\ud800<image>"),
        "prompt",
        "prompt: is not valid Unicode: a lone surrogate at character 0",
    ),
    (
        job_fields(images=PNG),
        "images",
        "images: must be a tuple of bytes, got bin (one image? pass it as (data,))",
    ),
    (job_fields(images=[PNG]), "images", "must be a tuple of bytes, got array"),
    (
        job_fields(images=(bytearray(PNG),)),
        "images[0]",
        "images[0]: must be bin (bytes), an ImageURL or an ImagePath, got bytearray",
    ),
    (job_fields(images=({"url": "http://a/"},)), "images[0]", "an ImageURL or an ImagePath"),
    (
        job_fields(images=(ImageURL(b"http://a/"),)),  # type: ignore[arg-type]
        "images[0].url",
        "must be str, got bin",
    ),
    (job_fields(images=(ImageURL("file:///etc/passwd"),)), "images[0].url", "http:// or"),
    (job_fields(images=(ImageURL("http://a/\t"),)), "images[0].url", "control characters"),
    (job_fields(images=(ImagePath(""),)), "images[0].path", "must not be empty"),
    (job_fields(images=(ImagePath("\ud800"),)), "images[0].path", "lone surrogate"),
    (job_fields(sampling={"top_k": 1}), "sampling", "sampling: must be a SamplingParams, got map"),
    (
        job_fields(sampling=SamplingParams(stop_strings=("\udfff",))),
        "sampling.stop_strings[0]",
        "lone surrogate",
    ),
    (job_fields(priority=7), "priority", "got 7"),
    (job_fields(priority=Priority.LOW.name), "priority", "must be int, got str"),
    (job_fields(metadata=[("k", 1)]), "metadata", "must be a map with str keys, got array"),
    (job_fields(metadata={"k": (1, 2)}), "metadata['k']", "got array"),
    (job_fields(metadata={"k": {1, 2}}), "metadata['k']", "got set"),
    (job_fields(metadata={b"k": 1}), "metadata", "keys must be str, got bin"),
    (job_fields(metadata={"k": "\ud800"}), "metadata['k']", "lone surrogate"),
]


@pytest.mark.parametrize(("fields", "field", "words"), BAD_SPECS)
def test_building_a_job_runs_the_same_checks(
    fields: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidPayloadError) as caught:
        JobSpec(**fields)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_the_constructor_refuses_what_decoding_refuses_with_the_same_field() -> None:
    # Every refusal of a value the table makes on the wire, made again by building the job.
    for field in ("job_id", "queue", "prompt", "images[0]", "images[1]", "metadata['k']"):
        for case, data, _ in HOSTILE_JOBS[field]:
            wire = msgpack.unpackb(data, strict_map_key=False)
            # A key the wire lacks is None here, which is refused for the same field.
            fields = {name: wire.get(name) for name in ("job_id", "queue", "prompt")}
            with pytest.raises(InvalidPayloadError) as caught:
                JobSpec(
                    **fields,
                    images=tuple(wire["images"]),
                    metadata=wire["metadata"],
                )
            assert caught.value.field == field, case


def test_an_int_priority_is_taken_as_its_priority_and_metadata_is_copied() -> None:
    mine: dict[str, Any] = {"k": 1}
    spec = JobSpec("j", "q", "hi", priority=2, metadata=mine)  # type: ignore[arg-type]
    assert spec.priority is Priority.LOW
    mine["k"] = [object()]
    assert spec.metadata == {"k": 1}


def test_encoding_checks_again_what_changed_after_building() -> None:
    spec = JobSpec("j", "q", "hi", metadata={"k": 1})
    spec.metadata["k"] = math.nan
    with pytest.raises(InvalidPayloadError) as caught:
        encode_job(spec)
    assert caught.value.field == "metadata['k']"
    around = object.__new__(JobSpec)
    for name, value in job_fields(
        images=(), prompt="hi", sampling=SamplingParams(), priority=Priority.HIGH, metadata={}
    ).items():
        object.__setattr__(around, name, value)
    object.__setattr__(around, "job_id", "bad id")
    with pytest.raises(InvalidPayloadError) as caught:
        encode_job(around)
    assert caught.value.field == "job_id"
    with pytest.raises(InvalidPayloadError, match="encode_job takes a JobSpec, got map"):
        encode_job({"job_id": "j"})  # type: ignore[arg-type]


def test_a_sampling_params_built_around_its_checks_is_refused() -> None:
    sampling = object.__new__(SamplingParams)
    for name, value in zip(SAMPLING_FIELDS, (0, 0.0, 1.0, 0, None, ()), strict=True):
        object.__setattr__(sampling, name, value)
    with pytest.raises(InvalidPayloadError) as caught:
        JobSpec("j", "q", "hi", sampling=sampling)
    assert caught.value.field == "sampling"
    assert "max_new_tokens must be >= 1, got 0" in str(caught.value)


def zero_timings() -> ResultTimings:
    return ResultTimings(0.0, 0.0, 0.0, 0.0)


def test_result_errors_are_cut_to_their_limit_and_made_valid_unicode() -> None:
    long = ResultError("E", "x" * (MAX_ERROR_MESSAGE_CHARS + 10), job_fault=False)
    assert len(long.message) == MAX_ERROR_MESSAGE_CHARS
    assert long.message.endswith("x…")
    exact = ResultError("E", "x" * MAX_ERROR_MESSAGE_CHARS, job_fault=False)
    assert exact.message == "x" * MAX_ERROR_MESSAGE_CHARS
    odd = ResultError("E", "file \udcff.png", job_fault=True)
    assert odd.message == "file \\udcff.png"
    failed = JobResult("j", JobState.FAILED, None, None, 0, 0, zero_timings(), 1, {}, long)
    assert decode_result(encode_result(failed)).error == long


def test_result_error_of_an_exception_says_whose_fault_it_was() -> None:
    assert ResultError.of(CorruptImageError("image is truncated")) == ResultError(
        "CorruptImageError", "image is truncated", job_fault=True
    )
    assert ResultError.of(TimeoutError("generator gone")) == ResultError(
        "TimeoutError", "generator gone", job_fault=False
    )


def test_building_a_result_runs_the_same_checks() -> None:
    ok: dict[str, Any] = {
        "job_id": "j",
        "state": JobState.SUCCEEDED,
        "text": "t",
        "finish_reason": "length",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "timings": zero_timings(),
        "deliveries": 1,
        "metadata": {},
        "error": None,
    }
    assert JobResult(**{**ok, "state": "succeeded"}).state is JobState.SUCCEEDED
    cases: list[tuple[dict[str, Any], str, str]] = [
        (
            {"state": JobState.QUEUED},
            "state",
            "must be a terminal state ('succeeded', 'failed', 'cancelled', 'dead'), got 'queued'",
        ),
        (
            {"state": JobState.FAILED},
            "state",
            "'failed' does not fit a result with text and no error",
        ),
        ({"text": None}, "state", "no text and no error"),
        ({"finish_reason": "eos "}, "finish_reason", "got 'eos '"),
        ({"text": "\ud800"}, "text", "lone surrogate"),
        ({"prompt_tokens": -1}, "prompt_tokens", "must be in [0,"),
        ({"deliveries": True}, "deliveries", "must be int, got bool"),
        ({"timings": (0.0, 0.0, 0.0, 0.0)}, "timings", "must be a ResultTimings, got array"),
        ({"error": "boom"}, "state", "text and an error"),
        (
            {"state": JobState.FAILED, "text": None, "finish_reason": None, "error": "boom"},
            "error",
            "must be a ResultError or None, got str",
        ),
        ({"metadata": {"k": math.inf}}, "metadata['k']", "finite float"),
        ({"job_id": ""}, "job_id", "must not be empty"),
    ]
    for changes, field, words in cases:
        with pytest.raises(InvalidPayloadError) as caught:
            JobResult(**{**ok, **changes})
        assert caught.value.field == field, changes
        assert words in str(caught.value), changes
    with pytest.raises(InvalidPayloadError) as caught:
        ResultTimings(0.0, math.nan, 0.0, 0.0)
    assert caught.value.field == "timings.run_s"
    with pytest.raises(InvalidPayloadError) as caught:
        ResultError("E", "m", job_fault=1)  # type: ignore[arg-type]
    assert caught.value.field == "error.job_fault"


# --- the error type ------------------------------------------------------------------------


def test_invalid_payload_error_is_a_job_error_that_survives_pickling() -> None:
    error = refusal(decode_job, pack(job_wire(prio=0)))
    assert isinstance(error, InvalidRequestError)
    assert isinstance(error, JobError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InvalidPayloadError
    assert (copy.field, str(copy)) == ("prio", str(error))
