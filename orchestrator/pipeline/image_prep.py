"""The CPU stage of an image: decode, validate and hash, in a Ray task off the driver.

The task returns two objects: a small `PreparedImage` the driver awaits (to key the image and
size its token range), and the decoded image, which only a vision actor ever reads. A bad image
is an answer, not a failure of the task: its `PreparedImage` carries the typed error and no
image follows (a failed task would leave Ray an error object nobody reads).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from orchestrator.pipeline.image_key import content_digest
from worker.errors import ImageError
from worker.images.decoding import ImageLimits, decode_image


@dataclass(frozen=True, slots=True)
class PreparedImage:
    digest: bytes  # of the encoded bytes, as received
    width: int  # upright, after EXIF orientation; 0 when `error` is set
    height: int
    error: ImageError | None = None  # why the image cannot be used

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def prepare_image(
    data: bytes, limits: ImageLimits
) -> tuple[PreparedImage, Image.Image | None]:
    digest = content_digest(data)
    try:
        image = decode_image(data, limits)
    except ImageError as error:
        return PreparedImage(digest, 0, 0, error), None
    return PreparedImage(digest, image.width, image.height), image
