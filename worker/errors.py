"""Every exception vlmq raises on purpose, in one hierarchy.

`VlmqError` is the root. A `JobError` is the job's own fault (bad input): it fails that job
with a readable message and nothing else. Anything else is the system's fault and may be
retried elsewhere.
"""

from __future__ import annotations


class VlmqError(Exception):
    """Root of every error vlmq raises on purpose."""


class JobError(VlmqError):
    """The job's input is at fault; retrying it unchanged cannot succeed."""


class PromptEncodingError(JobError):
    """A prompt and its spans do not fit together."""

    def __init__(self, alias: str, message: str) -> None:
        super().__init__(message)
        # The offending alias, so callers can point at it without parsing the message.
        self.alias = alias

    def __reduce__(self) -> tuple[type[PromptEncodingError], tuple[str, str]]:
        # Errors cross processes (Ray pickles them); rebuild with the constructor's arguments.
        return (type(self), (self.alias, str(self)))


class AliasWithoutSpanError(PromptEncodingError):
    """The prompt contains an image alias for which no span was given."""


class SpanWithoutAliasError(PromptEncodingError):
    """A span was given whose alias does not occur in the prompt."""


class ConflictingSpansError(PromptEncodingError):
    """Two spans share an alias but name different token ranges."""


class InvalidSpanError(PromptEncodingError):
    """A span is malformed: empty alias, empty range, or more special rows than rows."""


class InvalidRequestError(JobError):
    """A generation request is malformed: bad sampling parameters, features that do not fit."""


class PromptTooLongError(JobError):
    """The encoded prompt plus the tokens asked for do not fit the model's context."""


class AllocatorError(VlmqError):
    """The token-range allocator could not serve a request."""


class AllocatorStateUnavailableError(AllocatorError):
    """The allocator's durable state (Redis) cannot be reached, so no new IDs may be issued."""


class InvalidAllocationError(AllocatorError, JobError):
    """An allocation request is malformed (non-positive length, range longer than the region)."""


class StaleEpochError(VlmqError):
    """A request carries token ranges of an epoch older than one the generator has entered.

    Its IDs may now name other images, so it must get fresh ranges and be tried again.
    """


class EngineClosedError(VlmqError):
    """The engine was closed before the request finished; it may be retried elsewhere."""


class EngineDiedError(VlmqError):
    """The engine's thread died; it runs nothing more, and its process must be restarted.

    Not the job's fault: the request may be retried elsewhere.
    """


class JobCancelledError(VlmqError):
    """The job was cancelled by its user; it is neither the job's fault nor a failure to retry."""


class ImageError(JobError):
    """An image of the job cannot be used; the message says why in words a user can act on."""


class CorruptImageError(ImageError):
    """The image data is truncated or damaged, so it cannot be decoded."""


class UnsupportedImageFormatError(ImageError):
    """The data is not in a format vlmq accepts (JPEG, PNG, WebP, GIF)."""

    def __init__(self, detected_format: str, message: str) -> None:
        super().__init__(message)
        # What the leading bytes look like ("BMP", "SVG", "empty", "unknown"), for callers.
        self.detected_format = detected_format

    def __reduce__(self) -> tuple[type[UnsupportedImageFormatError], tuple[str, str]]:
        return (type(self), (self.detected_format, str(self)))


class ImageTooLargeError(ImageError):
    """The image exceeds a limit: encoded bytes, decoded pixels, or its longest side."""

    def __init__(self, measure: str, value: int | None, limit: int) -> None:
        if value is None:
            # Pillow's own decompression-bomb guard refused the header before we saw the size.
            detail = f"its header declares more {measure} than the limit of {limit:,}"
        else:
            detail = f"{value:,} {measure} is over the limit of {limit:,}"
        super().__init__(f"image is too large: {detail}")
        self.measure = measure  # "bytes", "pixels" or "pixels on its longest side"
        self.value = value
        self.limit = limit

    def __reduce__(self) -> tuple[type[ImageTooLargeError], tuple[str, int | None, int]]:
        return (type(self), (self.measure, self.value, self.limit))


class UnsupportedImageShapeError(ImageError):
    """The model cannot take an image of this shape (too small, or too extreme an aspect ratio)."""


class TooManyImagesError(ImageError):
    """A prompt carries more images than the limit allows."""

    def __init__(self, num_images: int, limit: int) -> None:
        super().__init__(f"the prompt has {num_images} images; at most {limit} are allowed")
        self.num_images = num_images
        self.limit = limit

    def __reduce__(self) -> tuple[type[TooManyImagesError], tuple[int, int]]:
        return (type(self), (self.num_images, self.limit))
