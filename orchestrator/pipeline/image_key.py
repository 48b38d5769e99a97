"""The image key: the content address of one image as one model sees it.

Two images share a key only if the model would embed them identically, so the key covers
- the content: the encoded bytes as received, or the decoded pixels with their geometry and
  pixel format (so the same pixels at another width, or in another mode, differ);
- the model's fingerprint (weights and config of the vision tower and projector);
- every preprocessing parameter that changes the embedding (resize limits, patch size, ...).
Leaving any of these out lets two different embeddings share token IDs and prefix-cache pages.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import msgpack

# Raised when the recipe below changes, so keys from different recipes never meet.
KEY_VERSION = 1

PreprocessingValue = str | int | float | bool | None | tuple["PreprocessingValue", ...]


@dataclass(frozen=True, slots=True)
class PixelGeometry:
    width: int
    height: int
    mode: str  # PIL mode of the pixel buffer, e.g. "RGB"


@dataclass(frozen=True, slots=True, order=True)
class ImageKey:
    digest: str  # hex BLAKE2b-256

    def __str__(self) -> str:
        return self.digest


def content_digest(data: bytes) -> bytes:
    """Digest of the image bytes alone; computed once at ingest and reused for every model."""
    return hashlib.blake2b(data, digest_size=32).digest()


def image_key_from_encoded(
    encoded_digest: bytes,
    model_fingerprint: str,
    preprocessing: Mapping[str, PreprocessingValue],
) -> ImageKey:
    """Key of an image identified by the digest of its encoded bytes (JPEG, PNG, ...)."""
    return _derive(["encoded", encoded_digest], model_fingerprint, preprocessing)


def image_key_from_pixels(
    pixels: bytes,
    geometry: PixelGeometry,
    model_fingerprint: str,
    preprocessing: Mapping[str, PreprocessingValue],
) -> ImageKey:
    """Key of an image identified by its decoded pixels and their geometry."""
    expected = geometry.width * geometry.height * _bytes_per_pixel(geometry.mode)
    if len(pixels) != expected:
        raise ValueError(
            f"{len(pixels)} bytes of pixels do not fit {geometry.width}x{geometry.height} "
            f"{geometry.mode} ({expected} bytes)"
        )
    content = ["pixels", geometry.width, geometry.height, geometry.mode, content_digest(pixels)]
    return _derive(content, model_fingerprint, preprocessing)


def _derive(
    content: list[object],
    model_fingerprint: str,
    preprocessing: Mapping[str, PreprocessingValue],
) -> ImageKey:
    if not model_fingerprint:
        raise ValueError("an image key needs the model's fingerprint")
    for name, value in preprocessing.items():
        _check_value(name, value)
    # msgpack keeps types apart (1, 1.0 and True encode differently) and sorting the names
    # makes the key independent of the order parameters were written in.
    preimage = msgpack.packb(
        [KEY_VERSION, content, model_fingerprint, sorted(preprocessing.items())],
        use_bin_type=True,
    )
    return ImageKey(hashlib.blake2b(preimage, digest_size=32).hexdigest())


def _check_value(name: str, value: PreprocessingValue) -> None:
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"preprocessing parameter {name!r} is NaN, which never equals itself")
    if isinstance(value, tuple):
        for item in value:
            _check_value(name, item)
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise TypeError(f"preprocessing parameter {name!r} has unhashable type {type(value)}")


def _bytes_per_pixel(mode: str) -> int:
    sizes = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I;16": 2, "I": 4, "F": 4}
    if mode not in sizes:
        raise ValueError(f"pixel mode {mode!r} is not one of {', '.join(sizes)}")
    return sizes[mode]
