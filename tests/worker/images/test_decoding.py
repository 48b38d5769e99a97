"""Image decoding and limits, on images Pillow writes at run time and bytes damaged by hand."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from worker.errors import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    JobError,
    TooManyImagesError,
    UnsupportedImageFormatError,
    UnsupportedImageShapeError,
)
from worker.images.decoding import ImageLimits, check_image_count, decode_image, sniff_format

LIMITS = ImageLimits()
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _encode(image: Image.Image, image_format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def _halves(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...]) -> Image.Image:
    """An RGB image whose left half is `left` and right half `right`."""
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header that declares `width` x `height` RGB, with a few bytes of pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to declare another size."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), RED), "JPEG"))
    start = data.index(b"\xff\xc0")
    data[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen size
    return bytes(data)


def _close(actual: Any, expected: tuple[int, ...], tolerance: int = 8) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, dtype=int) - np.asarray(expected)) <= tolerance))


def _decoded(data: bytes, limits: ImageLimits = LIMITS) -> Image.Image:
    image = decode_image(data, limits)
    # Always a plain RGB image, no longer tied to its file.
    assert image.mode == "RGB" and type(image) is Image.Image
    return image


# --- formats --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "params"),
    [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("GIF", {})],
)
def test_accepted_formats_decode_to_rgb(image_format: str, params: dict[str, Any]) -> None:
    data = _encode(_halves((40, 30), RED, BLUE), image_format, **params)
    assert sniff_format(data) == image_format
    image = _decoded(data)
    assert image.size == (40, 30)
    assert _close(image.getpixel((2, 15)), RED) and _close(image.getpixel((37, 15)), BLUE)


@pytest.mark.parametrize("image_format", ["GIF", "WEBP"])
def test_animations_give_their_first_frame(image_format: str) -> None:
    frames = [Image.new("RGB", (24, 24), colour) for colour in (RED, BLUE, WHITE)]
    params: dict[str, Any] = {"lossless": True} if image_format == "WEBP" else {}
    data = _encode(frames[0], image_format, save_all=True, append_images=frames[1:], **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert _close(_decoded(data).getpixel((12, 12)), RED)


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (_encode(Image.new("RGB", (8, 8)), "BMP"), "BMP"),
        (_encode(Image.new("RGB", (8, 8)), "TIFF"), "TIFF"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>', "SVG"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00", "AVIF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIF"),
        (b"just some text, not an image", "unknown"),
        (b"", "empty"),
    ],
)
def test_other_formats_are_refused_by_name(data: bytes, detected: str) -> None:
    with pytest.raises(UnsupportedImageFormatError) as caught:
        decode_image(data, LIMITS)
    assert caught.value.detected_format == detected
    assert detected in str(caught.value) and "JPEG, PNG, WebP or GIF" in str(caught.value)


# --- orientation and colour modes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"),
    [(6, RED, BLUE), (8, BLUE, RED)],  # 6: rotate 90 degrees clockwise; 8: counter-clockwise
)
def test_exif_orientation_is_applied(
    orientation: int, top: tuple[int, ...], bottom: tuple[int, ...]
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = _halves((40, 20), RED, BLUE)  # landscape as stored: red left, blue right
    image = _decoded(_encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (20, 40)  # portrait as shown
    assert _close(image.getpixel((10, 3)), top) and _close(image.getpixel((10, 36)), bottom)
    assert 0x0112 not in image.getexif()


def test_exif_orientation_3_turns_the_image_around() -> None:
    exif = Image.Exif()
    exif[0x0112] = 3
    image = _decoded(_encode(_halves((40, 20), RED, BLUE), "JPEG", exif=exif.tobytes()))
    assert image.size == (40, 20) and _close(image.getpixel((3, 10)), BLUE)


def _exif_with(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """Raw EXIF (big-endian TIFF, one IFD) written by hand: (tag, type, count, inline value)."""
    ifd = struct.pack(">H", len(entries))
    for tag, tag_type, count, value in entries:
        ifd += struct.pack(">HHI", tag, tag_type, count) + value.ljust(4, b"\x00")
    return b"Exif\x00\x00MM\x00\x2a" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)


def test_exif_that_pillow_cannot_read_back_is_a_typed_error() -> None:
    # ImageWidth stored as text: Pillow reads it, then fails (struct.error) to rewrite it
    # into the turned image's metadata.
    exif = _exif_with([(0x0100, 2, 4, b"abc\x00"), (0x0112, 3, 1, struct.pack(">H", 6))])
    data = _encode(Image.new("RGB", (8, 4)), "JPEG", exif=exif)
    with pytest.raises(CorruptImageError, match="the JPEG image has damaged EXIF metadata"):
        decode_image(data, LIMITS)


def test_exif_that_pillow_only_warns_about_decodes_unless_warnings_are_errors() -> None:
    # An entry pointing past the end of its data: Pillow warns and skips it.
    exif = _exif_with([(0x010F, 2, 64, struct.pack(">I", 4000)), (0x0112, 3, 1, b"\x00\x08")])
    data = _encode(_halves((40, 20), RED, BLUE), "JPEG", exif=exif, quality=95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _decoded(data).size == (20, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CorruptImageError, match="the JPEG image"):
            decode_image(data, LIMITS)


def _rgba_probe() -> Image.Image:
    """Four pixels: opaque red, transparent red, half-transparent black, opaque blue."""
    image = Image.new("RGBA", (4, 1))
    for x, pixel in enumerate([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 128), (0, 0, 255, 255)]):
        image.putpixel((x, 0), pixel)
    return image


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_alpha_is_composited_on_white(image_format: str) -> None:
    params: dict[str, Any] = {"lossless": True} if image_format == "WEBP" else {}
    image = _decoded(_encode(_rgba_probe(), image_format, **params))
    pixels = [image.getpixel((x, 0)) for x in range(4)]
    assert pixels[0] == RED and pixels[1] == WHITE and pixels[3] == BLUE
    assert _close(pixels[2], (127, 127, 127), tolerance=1)


def test_grey_with_alpha_is_composited_on_white() -> None:
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (100, 255))
    image.putpixel((1, 0), (100, 0))
    decoded = _decoded(_encode(image, "PNG"))
    assert decoded.getpixel((0, 0)) == (100, 100, 100) and decoded.getpixel((1, 0)) == WHITE


def test_palette_images_with_and_without_transparency() -> None:
    palette = Image.new("P", (3, 1))
    palette.putpalette([*RED, *BLUE, 0, 255, 0])
    for x in range(3):
        palette.putpixel((x, 0), x)
    opaque = _decoded(_encode(palette, "PNG"))
    assert [opaque.getpixel((x, 0)) for x in range(3)] == [RED, BLUE, (0, 255, 0)]
    # Several transparent entries: PNG stores them as bytes, which Pillow warns about when
    # converting to RGB directly; we go through RGBA, so no warning even under -W error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clear = _decoded(_encode(palette, "PNG", transparency=b"\x00\xff\x00"))
    assert [clear.getpixel((x, 0)) for x in range(3)] == [WHITE, BLUE, WHITE]
    gif = _decoded(_encode(palette, "GIF", transparency=1))
    assert [gif.getpixel((x, 0)) for x in range(3)] == [RED, WHITE, (0, 255, 0)]


def test_grey_and_bilevel_become_rgb() -> None:
    grey = _decoded(_encode(Image.new("L", (2, 2), 77), "PNG"))
    assert grey.getpixel((0, 0)) == (77, 77, 77)
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    decoded = _decoded(_encode(bilevel, "PNG"))
    assert [decoded.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]


def test_sixteen_bit_grey_keeps_its_levels() -> None:
    levels = np.array([[0, 4096, 32768, 65535]], dtype=np.uint16)
    data = _encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = _decoded(data)
    # Pillow's own conversion would clip everything above 255 to white.
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 16, 128, 255]


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = _encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert _close(_decoded(data).getpixel((4, 4)), RED)


# --- damaged data ---------------------------------------------------------------------------


def _valid(image_format: str) -> bytes:
    params: dict[str, Any] = {"quality": 90} if image_format == "JPEG" else {}
    noise = np.random.default_rng(7).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    return _encode(Image.fromarray(noise), image_format, **params)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_images_are_corrupt(image_format: str) -> None:
    data = _valid(image_format)
    for cut in (20, len(data) // 2, len(data) * 9 // 10):
        with pytest.raises(CorruptImageError, match=f"the {image_format} image could not be"):
            decode_image(data[:cut], LIMITS)


@pytest.mark.parametrize(
    ("image_format", "signature_length"), [("JPEG", 3), ("PNG", 8), ("WEBP", 12), ("GIF", 6)]
)
def test_images_cut_inside_their_signature_are_corrupt(
    image_format: str, signature_length: int
) -> None:
    data = _valid(image_format)
    for cut in range(2, signature_length):
        with pytest.raises(CorruptImageError, match=f"the {image_format} image is cut short"):
            decode_image(data[:cut], LIMITS)


@pytest.mark.parametrize(
    "data", [b"\x89", b"G", b"\x89PNG\r\n\x1a\r", b"GIF8b", b"RIFX", b"RIFF\x24\0\0\0WAVEfmt "]
)
def test_what_only_resembles_a_signature_stays_unknown(data: bytes) -> None:
    with pytest.raises(UnsupportedImageFormatError) as caught:
        decode_image(data, LIMITS)
    assert caught.value.detected_format == "unknown"


def test_damaged_png_data_is_corrupt() -> None:
    data = bytearray(_valid("PNG"))
    data[data.index(b"IDAT") + 40] ^= 0xFF  # inside the compressed pixels: its CRC no longer fits
    with pytest.raises(CorruptImageError):
        decode_image(bytes(data), LIMITS)
    for header_only in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff" + bytes(200), b"GIF89a\x00"):
        with pytest.raises(CorruptImageError, match=r"could not be decoded \(its header is not"):
            decode_image(header_only, LIMITS)


def test_a_zero_sized_image_is_corrupt() -> None:
    with pytest.raises(CorruptImageError):
        decode_image(_png_declaring(0, 10), LIMITS)


_EXIF = Image.Exif()
_EXIF[0x0112] = 6
_EXIF[0x010F] = "camera"
_MUTATION_SOURCES = [_valid(f) for f in ("JPEG", "PNG", "WEBP", "GIF")] + [
    _encode(Image.new("RGB", (16, 8), RED), f, exif=_EXIF.tobytes()) for f in ("JPEG", "WEBP")
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=st.sampled_from(_MUTATION_SOURCES),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
    keep=st.floats(0.05, 1.0),
)
def test_damaged_bytes_never_escape_as_untyped_errors(
    source: bytes, edits: list[tuple[float, int]], keep: float
) -> None:
    data = bytearray(source)
    for where, value in edits:
        data[int(where * len(data))] = value
    data = data[: max(1, int(keep * len(data)))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Pillow warning must not leak either
        try:
            image = decode_image(bytes(data), LIMITS)
        except ImageError as error:
            assert str(error)
        else:
            assert image.mode == "RGB"


# --- limits ---------------------------------------------------------------------------------


def test_byte_limit_is_checked_before_anything_else() -> None:
    data = _encode(Image.new("RGB", (64, 64)), "PNG")
    limits = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(data, limits)
    assert (caught.value.measure, caught.value.value) == ("bytes", len(data))
    assert f"over the limit of {len(data) - 1:,}" in str(caught.value)
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(b"not an image at all" * 100, ImageLimits(max_bytes=100))
    assert _decoded(data, ImageLimits(max_bytes=len(data))).size == (64, 64)


def test_longest_side_limit() -> None:
    data = _encode(Image.new("RGB", (9000, 2)), "PNG")
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(data, LIMITS)
    assert caught.value.measure == "pixels on its longest side"
    assert (caught.value.value, caught.value.limit) == (9000, 8192)
    assert "9,000 pixels on its longest side is over the limit of 8,192" in str(caught.value)


def test_pixel_limit_is_inclusive() -> None:
    limits = ImageLimits(max_pixels=1000)
    assert _decoded(_encode(Image.new("RGB", (40, 25)), "PNG"), limits).size == (40, 25)
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(_encode(Image.new("RGB", (40, 26)), "PNG"), limits)
    assert (caught.value.measure, caught.value.value, caught.value.limit) == ("pixels", 1040, 1000)


@pytest.mark.parametrize(
    "bomb",
    [_png_declaring(7000, 7000), _jpeg_declaring(8000, 6000), _gif_declaring(8000, 8000)],
)
def test_a_declared_size_over_the_limit_is_refused_before_decoding(bomb: bytes) -> None:
    # Decoding would fail as truncated; refusing as too large shows nothing was decoded.
    assert len(bomb) < 1000
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(bomb, LIMITS)
    assert caught.value.measure == "pixels" and caught.value.value is not None
    assert caught.value.value > LIMITS.max_pixels


@pytest.mark.parametrize("filter_action", ["always", "error", "ignore"])
@pytest.mark.parametrize(
    "bomb",
    [
        _png_declaring(9500, 9500),  # 90 MP: Pillow warns (DecompressionBombWarning)
        _png_declaring(100_000, 100_000),  # 10 GP: Pillow raises DecompressionBombError
        _jpeg_declaring(65_000, 65_000),
        _gif_declaring(65_535, 65_535),
    ],
)
def test_pillows_own_bomb_guard_never_escapes(bomb: bytes, filter_action: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter(filter_action)  # type: ignore[arg-type]
        with pytest.raises(ImageTooLargeError, match="too large"):
            decode_image(bomb, LIMITS)
    # Where warnings are not errors, Pillow may still warn (it checks on open); nothing else.
    assert all(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_image_count_limit() -> None:
    check_image_count(0, LIMITS)
    check_image_count(16, LIMITS)
    with pytest.raises(TooManyImagesError, match="17 images; at most 16") as caught:
        check_image_count(17, LIMITS)
    assert (caught.value.num_images, caught.value.limit) == (17, 16)
    with pytest.raises(ValueError):
        check_image_count(-1, LIMITS)


@pytest.mark.parametrize(
    "settings_",
    [{"max_bytes": 0}, {"max_pixels": -1}, {"max_side": True}, {"max_images": 2.5}],
)
def test_limits_validate_themselves(settings_: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        ImageLimits(**settings_)


def test_pixel_limit_stays_below_pillows_guard() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    with pytest.raises(ValueError, match="decompression-bomb"):
        ImageLimits(max_pixels=Image.MAX_IMAGE_PIXELS + 1)


def test_every_image_error_is_the_jobs_fault() -> None:
    for error in (
        CorruptImageError,
        UnsupportedImageFormatError,
        ImageTooLargeError,
        TooManyImagesError,
        UnsupportedImageShapeError,
    ):
        assert issubclass(error, ImageError) and issubclass(error, JobError)
