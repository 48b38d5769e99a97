"""A job as the pipeline takes it, its checks, and its outcome.

A job is checked twice over. Constructing a `JobRequest` refuses fields of the wrong type: that
is a bug in the caller's code, best shown on the line that made it. What the fields hold (the
prompt's text and size, its placeholders) comes from the caller's users; the pipeline judges it
when it takes the job, as it judges image bytes, so a bad job fails alone with an outcome and
the rest of the batch runs. The pipeline repeats the type checks too, for a job built around
the constructor (`object.__new__`, a decoder that sets fields): `validate_job` is the whole
verdict, and every refusal is an `InvalidRequestError` that names the field.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field

from orchestrator.image_ref import ImageInput, ImagePath, ImageURL
from orchestrator.job_limits import IMAGE_PLACEHOLDER, MAX_JOB_ID_BYTES, MAX_PROMPT_BYTES
from worker.errors import InvalidRequestError
from worker.generation import GenerationResult
from worker.sampling_params import SamplingParams

# The limits live in orchestrator.job_limits (the queue's schema shares them); callers have
# always imported them from here, so they are re-exported.
__all__ = [
    "IMAGE_PLACEHOLDER",
    "MAX_JOB_ID_BYTES",
    "MAX_PROMPT_BYTES",
    "JobFailure",
    "JobOutcome",
    "JobRequest",
    "job_id_of",
    "validate_job",
]

# Bounded reprs, for messages and for outcomes of jobs whose IDs were not str.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60


@dataclass(frozen=True, slots=True)
class JobRequest:
    job_id: str
    prompt: str  # one IMAGE_PLACEHOLDER per image, in the order of `images`
    # Each encoded JPEG, PNG, WebP or GIF, or an ImageURL or ImagePath read under the
    # pipeline's ImageSourcePolicy (on the cluster, in the image's CPU task).
    images: tuple[ImageInput, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        _check_types(self)


def validate_job(job: object) -> None:
    """Refuse a job the pipeline cannot run for its own fault, before any work is spent on it.

    Raises `InvalidRequestError` naming the field. Image bytes and the image count are judged
    later, by decoding and by the pipeline's `ImageLimits`; references, when they are read.
    """
    if not isinstance(job, JobRequest):
        raise InvalidRequestError(f"a job must be a JobRequest, got {type(job).__name__}")
    _check_types(job)
    where = _where(job)
    if not job.job_id:
        raise InvalidRequestError("job_id must not be empty")
    _check_utf8(job.job_id, "job_id", MAX_JOB_ID_BYTES, where)
    _check_utf8(job.prompt, "prompt", MAX_PROMPT_BYTES, where)
    num_placeholders = job.prompt.count(IMAGE_PLACEHOLDER)
    if num_placeholders != len(job.images):
        raise InvalidRequestError(
            f"{where}: the prompt has {num_placeholders} {IMAGE_PLACEHOLDER} placeholders "
            f"for {len(job.images)} images"
        )
    # SamplingParams checks itself when constructed; run its checks again for one that was not.
    SamplingParams.__post_init__(job.sampling)


def job_id_of(job: object) -> str:
    """The ID an outcome names a job by: its own when it is a str, else a short repr of it."""
    job_id = getattr(job, "job_id", None)
    if isinstance(job_id, str):
        return job_id
    if hasattr(job, "job_id"):
        return _short.repr(job_id)
    return f"<{type(job).__name__} without a job_id>"


@dataclass(frozen=True, slots=True)
class JobFailure:
    error_type: str  # the exception's class name, e.g. "CorruptImageError"
    message: str
    is_job_error: bool  # the job's own fault (bad input); otherwise the system gave up


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job_id: str  # always a str: a job that carried another ID is named by its repr
    result: GenerationResult | None  # set when the job succeeded
    failure: JobFailure | None  # set when it failed
    attempts: int  # generation attempts made; more than 1 after an actor died

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str):
            object.__setattr__(self, "job_id", _short.repr(self.job_id))

    @property
    def ok(self) -> bool:
        return self.result is not None


def _check_types(job: JobRequest) -> None:
    where = _where(job)
    if not isinstance(job.job_id, str):
        raise InvalidRequestError(f"{where}: job_id must be a str, got {_type(job.job_id)}")
    if not isinstance(job.prompt, str):
        raise InvalidRequestError(f"{where}: prompt must be a str, got {_type(job.prompt)}")
    if not isinstance(job.images, tuple):
        hint = " (one image? pass it as (data,))" if isinstance(job.images, bytes) else ""
        raise InvalidRequestError(
            f"{where}: images must be a tuple of bytes, got {_type(job.images)}{hint}"
        )
    for index, image in enumerate(job.images):
        if isinstance(image, ImageURL | ImagePath):
            name = "url" if isinstance(image, ImageURL) else "path"
            value = getattr(image, name)
            if not isinstance(value, str):
                raise InvalidRequestError(
                    f"{where}: images[{index}].{name} must be a str, got {_type(value)}"
                )
        elif not isinstance(image, bytes):
            raise InvalidRequestError(
                f"{where}: images[{index}] must be bytes (an encoded image), an ImageURL or an "
                f"ImagePath, got {_type(image)}"
            )
    if not isinstance(job.sampling, SamplingParams):
        raise InvalidRequestError(
            f"{where}: sampling must be a SamplingParams, got {_type(job.sampling)}"
        )


def _check_utf8(text: str, name: str, max_bytes: int, where: str) -> None:
    """Refuse `text` unless it is valid Unicode of at most `max_bytes` bytes of UTF-8."""
    # Every character is at least one byte: a text this long is refused without encoding it.
    if len(text) > max_bytes:
        raise InvalidRequestError(
            f"{where}: {name} is {len(text):,} characters, over the limit of {max_bytes:,} "
            f"bytes of UTF-8"
        )
    try:
        num_bytes = len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        # Only a lone surrogate (half of a UTF-16 pair, e.g. from a JSON "\ud800") gets here.
        raise InvalidRequestError(
            f"{where}: {name} is not valid Unicode: a lone surrogate "
            f"{text[error.start]!r} at character {error.start:,}"
        ) from None
    if num_bytes > max_bytes:
        raise InvalidRequestError(
            f"{where}: {name} is {num_bytes:,} bytes of UTF-8, over the limit of {max_bytes:,}"
        )


def _where(job: object) -> str:
    """How a message names the job: a short repr, since its ID may be long, or not a str."""
    return f"job {_short.repr(getattr(job, 'job_id', None))}"


def _type(value: object) -> str:
    return "None" if value is None else type(value).__name__
