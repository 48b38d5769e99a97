"""Image bytes to an RGB picture, or a typed error that says what is wrong with them.

Decoding is where untrusted bytes meet a C library, so every check that can be made without
decoding comes first: the byte count, the format from the leading bytes, then the size the
header declares. Pixels are decoded only for an image that passed all of them, so a
decompression bomb (a few bytes that declare gigapixels) costs nothing. Pillow raises a zoo of
exception types for damaged data; none of them leaves this module untranslated.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker.errors import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    TooManyImagesError,
    UnsupportedImageFormatError,
)

# Pillow's format names for what we accept; Pillow is told to try no other decoder.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")

# Transparent pixels become white: the choice of exllamav2's and transformers' own RGB
# conversion, so an image looks the same to either engine whoever converted it.
_BACKGROUND = (255, 255, 255, 255)


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What a job's images may cost; every default lives here."""

    max_bytes: int = 20 * 1024 * 1024  # encoded size, checked before anything is parsed
    # Decoded size; 40 MP is a 7,300 x 5,500 photo, RGB 120 MB. Kept below Pillow's own
    # decompression-bomb threshold, so our check, with our message, is the one that fires.
    max_pixels: int = 40_000_000
    max_side: int = 8192  # longest side in pixels; thin strips are huge without many pixels
    max_images: int = 16  # per prompt

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_side", "max_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit is not None and self.max_pixels > pillow_limit:
            raise ValueError(
                f"max_pixels {self.max_pixels:,} is above Pillow's decompression-bomb limit "
                f"({pillow_limit:,}); Pillow would refuse such images before this check"
            )


def check_image_count(num_images: int, limits: ImageLimits) -> None:
    """Refuse a prompt with more images than `limits.max_images`."""
    if num_images < 0:
        raise ValueError(f"an image count cannot be negative, got {num_images}")
    if num_images > limits.max_images:
        raise TooManyImagesError(num_images, limits.max_images)


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decode a JPEG, PNG, WebP or GIF (first frame) to an upright RGB image.

    Raises `ImageTooLargeError`, `UnsupportedImageFormatError` or `CorruptImageError`.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError("bytes", len(data), limits.max_bytes)
    image_format = sniff_format(data)
    if image_format not in SUPPORTED_FORMATS:
        cut_short = truncated_signature(data)
        if cut_short is not None:
            raise CorruptImageError(
                f"the {cut_short} image is cut short: its {len(data)} bytes end inside the "
                f"{cut_short} signature"
            )
        raise UnsupportedImageFormatError(
            image_format,
            f"unsupported image format: {_describe(image_format)}; send JPEG, PNG, WebP or GIF",
        )
    with (
        _pillow_errors(f"the {image_format} image could not be decoded", limits),
        Image.open(io.BytesIO(data), formats=(image_format,)) as encoded,
    ):
        # Image.open has read the header only; nothing is decoded yet.
        _check_size(encoded.width, encoded.height, limits)
        # A GIF or WebP opens at its first frame; loading decodes that frame alone.
        encoded.load()
        # Pillow reads what it can of damaged EXIF (warning); what it cannot read fails here,
        # since a picture whose orientation is unknown may be shown to the model sideways.
        with _pillow_errors(f"the {image_format} image has damaged EXIF metadata", limits):
            # Always a new image (a copy when upright already), so it outlives the file.
            upright = ImageOps.exif_transpose(encoded)
        return upright if upright.mode == "RGB" else _to_rgb(upright)


def sniff_format(data: bytes) -> str:
    """Name the format the leading bytes announce, as Pillow spells the ones we accept."""
    if not data:
        return "empty"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        # ISO-BMFF: HEIC from phones, AVIF from the web; both need plugins we do not load.
        return "AVIF" if data[8:12] in (b"avif", b"avis") else "HEIF"
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<svg", b"<?xml")):
        return "SVG" if b"<svg" in data[:4096].lower() else "XML"
    if head.startswith((b"<!doctype html", b"<html")):
        # Typically an error page fetched in place of the image.
        return "HTML"
    return "unknown"


def truncated_signature(data: bytes) -> str | None:
    """The format we accept whose signature `data` begins but ends too soon to hold, if any.

    Such data is an image cut short (an interrupted upload), not some other format: "corrupt"
    tells the user what to fix. A single byte says too little to name a format by.
    """
    if len(data) < 2:
        return None
    for signature, name in _SIGNATURES:
        if len(data) < len(signature) and all(
            want is None or byte == want
            for byte, want in zip(data, signature[: len(data)], strict=True)
        ):
            return name
    return None


def _describe(image_format: str) -> str:
    if image_format == "empty":
        return "the image data is empty"
    if image_format == "unknown":
        return "the data is in an unknown format"
    return f"the data looks like {image_format}"


# Leading bytes of formats we accept and of formats we name when refusing them.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
)


# The accepted formats' signatures, byte by byte; None stands for any byte (a RIFF file carries
# its size between "RIFF" and "WEBP").
_SIGNATURES: tuple[tuple[tuple[int | None, ...], str], ...] = (
    (tuple(b"\xff\xd8\xff"), "JPEG"),
    (tuple(b"\x89PNG\r\n\x1a\n"), "PNG"),
    (tuple(b"GIF87a"), "GIF"),
    (tuple(b"GIF89a"), "GIF"),
    ((*b"RIFF", None, None, None, None, *b"WEBP"), "WEBP"),
)


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"the image declares an empty size ({width} x {height})")
    if max(width, height) > limits.max_side:
        raise ImageTooLargeError("pixels on its longest side", max(width, height), limits.max_side)
    if width * height > limits.max_pixels:
        raise ImageTooLargeError("pixels", width * height, limits.max_pixels)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: Pillow's own conversion clips at 255 (nearly everything turns white);
        # keep the top 8 bits instead. "I" holds the same 0..65535 range from older decoders.
        levels = np.asarray(image).astype(np.int64).clip(0, 65535) >> 8
        return Image.fromarray(levels.astype(np.uint8), "L").convert("RGB")
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND)
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK converts without a colour profile; close enough for a vision tower.
    return image.convert("RGB")


@contextmanager
def _pillow_errors(failure: str, limits: ImageLimits) -> Iterator[None]:
    """Translate whatever Pillow raises into our errors; `failure` opens the message.

    Pillow signals damaged data with OSError, SyntaxError, ValueError, EOFError, struct.error,
    TypeError and more; a warning turned into an exception (-W error) arrives here too.
    """
    try:
        yield
    except ImageError:
        raise
    except MemoryError:
        # Our limits bound what one image may allocate; running out is the worker's trouble.
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError("pixels", None, limits.max_pixels) from exc
    except UnidentifiedImageError as exc:
        # Its own message names an in-memory buffer, which tells a user nothing.
        raise CorruptImageError(f"{failure} (its header is not valid)") from exc
    except Exception as exc:
        raise CorruptImageError(f"{failure} ({str(exc) or type(exc).__name__})") from exc
