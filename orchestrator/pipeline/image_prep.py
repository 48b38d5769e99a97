"""The CPU stage of an image: read, decode, validate and hash, in a Ray task off the driver.

The task returns two objects: a small `PreparedImage` the driver awaits (to key the image and
size its token range), and the decoded image, which only a vision actor ever reads. A bad image
is an answer, not a failure of the task: its `PreparedImage` carries the typed error and no
image follows (a failed task would leave Ray an error object nobody reads).

An image given by reference is read here, on the cluster side, under the pipeline's
`ImageSourcePolicy`; from its bytes on it is an inline image: same decode, limits and digest,
so the same picture gets the same image key however the job carried it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from PIL import Image

from orchestrator.image_fetch import ImageFetchTransientError, ImageSourcePolicy, read_image_source
from orchestrator.image_ref import ImageInput, ImagePath, ImageURL
from orchestrator.metrics import definitions as metrics
from orchestrator.pipeline.image_key import content_digest
from worker.errors import ImageError
from worker.images.decoding import ImageLimits, decode_image


@dataclass(frozen=True, slots=True)
class PreparedImage:
    digest: bytes  # of the encoded bytes, as received or read; empty when they were not read
    width: int  # upright, after EXIF orientation; 0 when `error` is set
    height: int
    # Why the image cannot be used: an ImageError fails the job; a transient failure to read
    # its source fails it as the system's fault, so the queue tries it again later.
    error: ImageError | ImageFetchTransientError | None = None

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def prepare_image(
    source: ImageInput, limits: ImageLimits, policy: ImageSourcePolicy
) -> tuple[PreparedImage, Image.Image | None]:
    if policy.max_bytes > limits.max_bytes:
        # Bytes past the decoder's limit would only be refused: stop reading there.
        policy = dataclasses.replace(policy, max_bytes=limits.max_bytes)
    try:
        data = read_image_source(source, policy)
    except (ImageError, ImageFetchTransientError) as error:
        metrics.IMAGE_FAILURES.inc(stage="fetch", error_type=type(error).__name__)
        return PreparedImage(b"", 0, 0, error), None
    metrics.IMAGES_FETCHED.inc(source=_source_kind(source))
    digest = content_digest(data)
    try:
        image = decode_image(data, limits)
    except ImageError as error:
        metrics.IMAGE_FAILURES.inc(stage="decode", error_type=type(error).__name__)
        return PreparedImage(digest, 0, 0, error), None
    metrics.IMAGES_DECODED.inc()
    return PreparedImage(digest, image.width, image.height), image


def _source_kind(source: ImageInput) -> str:
    """A bounded tag for where an image came from: never the URL or path itself."""
    if isinstance(source, ImageURL):
        return "url"
    if isinstance(source, ImagePath):
        return "path"
    return "inline"
