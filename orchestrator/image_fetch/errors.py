"""Why an image could not be read from its URL or path, as typed errors.

A refusal by the policy and a source that answered with something unusable are the job's own
fault (`ImageError`, a `JobError`): the job fails at once. A failure that may pass (a timeout,
a reset connection, a server error) is not: the queue retries the job with backoff.
"""

from __future__ import annotations

from worker.errors import ImageError, VlmqError

MAX_SHOWN_CHARS = 200  # of a URL or path in a message: it may be hostile, and long


class ImageFetchRefusedError(ImageError):
    """The policy does not allow reading this source: its scheme, host, address or path."""


class ImageFetchError(ImageError):
    """The source was reached and cannot give an image: HTTP 4xx, a type that is no image,
    too many bytes, too many redirects, a file that is missing or unreadable."""


class ImageFetchTransientError(VlmqError):
    """Reading the source failed in a way that may pass: a timeout, a refused or reset
    connection, a temporary DNS failure, HTTP 5xx or 429. Not a JobError, so it is retried."""


def shown(text: str) -> str:
    """`text` quoted for a message, cut to MAX_SHOWN_CHARS, control characters escaped."""
    if len(text) > MAX_SHOWN_CHARS:
        return repr(text[:MAX_SHOWN_CHARS] + "…")
    return repr(text)
