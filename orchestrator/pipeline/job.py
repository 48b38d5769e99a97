"""A job as the pipeline takes it, and its outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.generation import GenerationResult
from worker.sampling import SamplingParams

# Where an image goes in a job's prompt: one placeholder per image, in order.
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True, slots=True)
class JobRequest:
    job_id: str
    prompt: str  # one IMAGE_PLACEHOLDER per image, in the order of `images`
    images: tuple[bytes, ...] = ()  # encoded JPEG, PNG, WebP or GIF
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True, slots=True)
class JobFailure:
    error_type: str  # the exception's class name, e.g. "CorruptImageError"
    message: str
    is_job_error: bool  # the job's own fault (bad input); otherwise the system gave up


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job_id: str
    result: GenerationResult | None  # set when the job succeeded
    failure: JobFailure | None  # set when it failed
    attempts: int  # generation attempts made; more than 1 after an actor died

    @property
    def ok(self) -> bool:
        return self.result is not None
