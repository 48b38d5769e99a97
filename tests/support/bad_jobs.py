"""Jobs built the way careless or hostile callers build them, each with the error it must get.

Most bad fields cannot pass `JobRequest`'s constructor; `around_checks` builds them the way a
decoder that sets fields (or `object.__new__`) would, so the pipeline's own checks are what
meets them.
"""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from orchestrator.pipeline.job import IMAGE_PLACEHOLDER, MAX_PROMPT_BYTES, JobRequest
from worker.sampling_params import SamplingParams

T = TypeVar("T")


def around_checks(cls: type[T], **values: Any) -> T:
    """A frozen dataclass `cls` holding `values` (defaults elsewhere), its checks never run."""
    instance = object.__new__(cls)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in values:
            value = values[field.name]
        elif field.default is not dataclasses.MISSING:
            value = field.default
        else:
            value = field.default_factory()  # type: ignore[operator]
        object.__setattr__(instance, field.name, value)
    return instance


@dataclass(frozen=True, slots=True)
class BadJob:
    job: JobRequest  # possibly built around its checks: any field may hold anything
    error_type: str  # the JobError its outcome must carry
    kind: str  # what is wrong, for messages


def encoded(image_format: str, seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (24 + seed % 16, 20 + seed % 8))
    image.putdata([(rng.randrange(256), rng.randrange(256), 99) for _ in range(image.width *
                                                                                image.height)])
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


# One of each accepted format; any cut in the first half leaves each of them undecodable.
_SOURCES = {name: encoded(name, seed) for seed, name in enumerate(("PNG", "JPEG", "WEBP", "GIF"))}


def _job(job_id: object, **values: Any) -> JobRequest:
    values.setdefault("prompt", "What is in <image>?")
    values.setdefault("images", (_SOURCES["PNG"],))
    values.setdefault("sampling", SamplingParams(3))
    return around_checks(JobRequest, job_id=job_id, **values)


def _cut(rng: random.Random) -> bytes:
    source = _SOURCES[rng.choice(sorted(_SOURCES))]
    # From 2 bytes (inside the signature) to half the file.
    return source[: rng.randrange(2, len(source) // 2)]


def _cut_in_signature(rng: random.Random) -> bytes:
    # Shorter than its signature: once taken for "an unknown format".
    name, length = rng.choice([("JPEG", 3), ("PNG", 8), ("WEBP", 12), ("GIF", 6)])
    return _SOURCES[name][: rng.randrange(2, length)]


def _unknown(rng: random.Random) -> bytes:
    # A leading zero byte starts no signature vlmq knows.
    return b"\x00" + rng.randbytes(rng.randrange(1, 200))


# Each kind: (error type, a function of (job ID, rng) that makes a job of that kind).
KINDS: dict[str, tuple[str, Callable[[str, random.Random], JobRequest]]] = {
    "prompt-none": ("InvalidRequestError", lambda i, r: _job(i, prompt=None)),
    "prompt-bytes": ("InvalidRequestError", lambda i, r: _job(i, prompt=b"<image>")),
    "job-id-int": (
        "InvalidRequestError", lambda i, r: _job(int.from_bytes(i.encode(), "big"), images=())
    ),
    "images-bare-bytes": ("InvalidRequestError", lambda i, r: _job(i, images=_SOURCES["PNG"])),
    "images-list": ("InvalidRequestError", lambda i, r: _job(i, images=[_SOURCES["PNG"]])),
    "image-str": ("InvalidRequestError", lambda i, r: _job(i, images=("a picture",))),
    "image-int": ("InvalidRequestError", lambda i, r: _job(i, images=(r.randrange(256),))),
    "image-none": ("InvalidRequestError", lambda i, r: _job(i, images=(None,))),
    "second-image-none": (
        "InvalidRequestError",
        lambda i, r: _job(i, prompt="<image><image>", images=(_SOURCES["GIF"], None)),
    ),
    "sampling-none": ("InvalidRequestError", lambda i, r: _job(i, sampling=None)),
    "sampling-dict": ("InvalidRequestError", lambda i, r: _job(i, sampling={"max_new_tokens": 3})),
    "sampling-unchecked": (
        "InvalidRequestError",
        lambda i, r: _job(i, sampling=around_checks(SamplingParams, **r.choice(_BAD_SAMPLING))),
    ),
    "prompt-surrogate": (
        "InvalidRequestError",
        lambda i, r: JobRequest(i, "<image> \ud800" + "x" * r.randrange(9), (_SOURCES["PNG"],)),
    ),
    "job-id-surrogate": ("InvalidRequestError", lambda i, r: JobRequest(i + "\udfff", "hello")),
    "prompt-oversized": (
        "InvalidRequestError",
        lambda i, r: JobRequest(i, r.choice("xé") * (MAX_PROMPT_BYTES + 1)),
    ),
    "prompt-oversized-utf8": (
        "InvalidRequestError",
        # Fewer characters than the limit, more bytes: the limit is on UTF-8 bytes.
        lambda i, r: JobRequest(i, "é" * (MAX_PROMPT_BYTES // 2 + 1)),
    ),
    "image-cut-short": ("CorruptImageError", lambda i, r: JobRequest(i, "<image>", (_cut(r),))),
    "image-cut-in-signature": (
        "CorruptImageError",
        lambda i, r: JobRequest(i, "<image>", (_cut_in_signature(r),)),
    ),
    "image-unknown": (
        "UnsupportedImageFormatError", lambda i, r: JobRequest(i, "<image>", (_unknown(r),))
    ),
    "good-and-cut-image": (
        "CorruptImageError",
        lambda i, r: JobRequest(i, "<image> or <image>", (_SOURCES["JPEG"], _cut(r))),
    ),
    "too-few-placeholders": (
        "InvalidRequestError", lambda i, r: JobRequest(i, "no image", (_SOURCES["PNG"],))
    ),
    "too-many-placeholders": (
        "InvalidRequestError", lambda i, r: JobRequest(i, IMAGE_PLACEHOLDER * 2, (_SOURCES["PNG"],))
    ),
    "too-many-images": (
        "TooManyImagesError",
        lambda i, r: JobRequest(i, IMAGE_PLACEHOLDER * 17, (_SOURCES["WEBP"],) * 17),
    ),
}

# Sampling values SamplingParams refuses: each reached an engine thread before issue 8.
_BAD_SAMPLING: list[dict[str, Any]] = [
    {"max_new_tokens": 0},
    {"max_new_tokens": True},
    {"temperature": 1e308},
    {"temperature": 1e-40},
    {"temperature": float("nan")},
    {"top_p": 1e-300},
    {"top_k": -1},
    {"seed": 2**64},
    {"stop_strings": (5,)},
    {"stop_strings": "stop"},
]


def bad_job(kind: str, job_id: str, rng: random.Random) -> BadJob:
    error_type, make = KINDS[kind]
    return BadJob(make(job_id, rng), error_type, kind)
