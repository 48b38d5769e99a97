"""Images by reference: read a job's `ImageURL` or `ImagePath` on the cluster side, under the
serving side's `ImageSourcePolicy`, into the same bytes an inline image would carry."""

from __future__ import annotations

from orchestrator.image_fetch.errors import (
    ImageFetchError,
    ImageFetchRefusedError,
    ImageFetchTransientError,
)
from orchestrator.image_fetch.path_source import read_image_path
from orchestrator.image_fetch.policy import ImageSourcePolicy
from orchestrator.image_fetch.url_fetch import fetch_url
from orchestrator.image_ref import ImageInput, ImagePath, ImageURL

__all__ = [
    "ImageFetchError",
    "ImageFetchRefusedError",
    "ImageFetchTransientError",
    "ImageSourcePolicy",
    "read_image_source",
]


def read_image_source(source: ImageInput, policy: ImageSourcePolicy) -> bytes:
    """The encoded image `source` is or names; inline bytes pass through unread."""
    if isinstance(source, bytes):
        return source
    if isinstance(source, ImageURL):
        return fetch_url(source.url, policy)
    if isinstance(source, ImagePath):
        return read_image_path(source.path, policy)
    raise ImageFetchRefusedError(
        f"an image must be bytes, an ImageURL or an ImagePath, got {type(source).__name__}"
    )
