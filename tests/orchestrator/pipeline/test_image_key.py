"""The image key changes whenever anything that changes the embedding changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.pipeline.image_key import (
    PixelGeometry,
    PreprocessingValue,
    content_digest,
    image_key_from_encoded,
    image_key_from_pixels,
)

FINGERPRINT = "model-sha-1234"
PREPROCESSING: dict[str, PreprocessingValue] = {
    "max_pixels": 1_003_520,
    "patch_size": 14,
    "resample": "bicubic",
    "image_mean": (0.5, 0.5, 0.5),
    "do_rescale": True,
}
PIXELS = bytes(range(256)) * 3  # 16 x 16 RGB
GEOMETRY = PixelGeometry(width=16, height=16, mode="RGB")


def encoded_key(
    data: bytes = b"\xff\xd8jpeg bytes",
    fingerprint: str = FINGERPRINT,
    preprocessing: dict[str, PreprocessingValue] | None = None,
) -> str:
    digest = content_digest(data)
    return image_key_from_encoded(digest, fingerprint, preprocessing or PREPROCESSING).digest


def test_same_inputs_same_key_in_another_process() -> None:
    # Another interpreter with another hash seed: a key built on per-process state would differ.
    script = (
        "from tests.orchestrator.pipeline.test_image_key import encoded_key; print(encoded_key())"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == encoded_key()
    assert len(encoded_key()) == 64


def test_parameter_order_does_not_matter() -> None:
    assert encoded_key(preprocessing=dict(reversed(list(PREPROCESSING.items())))) == encoded_key()


def test_content_changes_the_key() -> None:
    assert encoded_key(data=b"\xff\xd8jpeg byteS") != encoded_key()


def test_model_fingerprint_changes_the_key() -> None:
    assert encoded_key(fingerprint="model-sha-1235") != encoded_key()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_pixels", 1_003_521),
        ("patch_size", 16),
        ("resample", "bilinear"),
        ("image_mean", (0.5, 0.5, 0.4)),
        ("do_rescale", False),
        ("max_pixels", 1_003_520.0),  # same number, another type
    ],
)
def test_every_preprocessing_parameter_changes_the_key(
    name: str, value: PreprocessingValue
) -> None:
    assert encoded_key(preprocessing={**PREPROCESSING, name: value}) != encoded_key()


def test_an_added_parameter_changes_the_key() -> None:
    assert encoded_key(preprocessing={**PREPROCESSING, "min_pixels": 3136}) != encoded_key()


def pixel_key(
    pixels: bytes = PIXELS, geometry: PixelGeometry = GEOMETRY, fingerprint: str = FINGERPRINT
) -> str:
    return image_key_from_pixels(pixels, geometry, fingerprint, PREPROCESSING).digest


@pytest.mark.parametrize(
    "geometry",
    [PixelGeometry(32, 8, "RGB"), PixelGeometry(8, 32, "RGB"), PixelGeometry(12, 16, "RGBA")],
)
def test_geometry_changes_the_key_of_the_same_pixel_bytes(geometry: PixelGeometry) -> None:
    assert pixel_key(geometry=geometry) != pixel_key()


def test_pixel_content_and_fingerprint_change_the_key() -> None:
    changed = bytearray(PIXELS)
    changed[100] ^= 1
    assert pixel_key(pixels=bytes(changed)) != pixel_key()
    assert pixel_key(fingerprint="other") != pixel_key()


def test_pixel_and_encoded_keys_never_meet() -> None:
    digest = content_digest(PIXELS)
    assert image_key_from_encoded(digest, FINGERPRINT, PREPROCESSING).digest != pixel_key()


def test_pixels_must_fit_their_geometry() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        pixel_key(pixels=PIXELS[:-1])
    with pytest.raises(ValueError, match="pixel mode"):
        pixel_key(geometry=PixelGeometry(16, 16, "CMYK+"))


def test_missing_fingerprint_and_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        encoded_key(fingerprint="")
    with pytest.raises(ValueError, match="NaN"):
        encoded_key(preprocessing={"scale": float("nan")})
    with pytest.raises(TypeError, match="unhashable"):
        encoded_key(preprocessing={"sizes": [1, 2]})  # type: ignore[dict-item]
