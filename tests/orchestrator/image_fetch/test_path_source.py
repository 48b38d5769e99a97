"""Image paths under the image root: read inside it, refused out of it however they try."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.image_fetch import (
    ImageFetchError,
    ImageFetchRefusedError,
    ImageSourcePolicy,
    read_image_source,
)
from orchestrator.image_ref import ImagePath
from tests.support.pipeline_fixtures import IMAGES

PNG = IMAGES[0]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    (images / "cats").mkdir(parents=True)
    (images / "cats" / "tabby.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(b"outside the root")
    return images


def read(path: str | Path, root: Path, **options: object) -> bytes:
    policy = ImageSourcePolicy(image_root=str(root), **options)  # type: ignore[arg-type]
    return read_image_source(ImagePath(str(path)), policy)


def test_a_file_inside_the_root_is_read_by_relative_or_absolute_path(root: Path) -> None:
    assert read("cats/tabby.png", root) == PNG
    assert read("./cats//tabby.png", root) == PNG
    assert read(root / "cats" / "tabby.png", root) == PNG


def test_a_symlink_that_stays_inside_the_root_is_followed(root: Path) -> None:
    (root / "latest.png").symlink_to("cats/tabby.png")
    (root / "felines").symlink_to(root / "cats")
    assert read("latest.png", root) == PNG
    assert read("felines/tabby.png", root) == PNG


def test_a_root_that_is_itself_a_symlink_works(root: Path, tmp_path: Path) -> None:
    (tmp_path / "link-to-images").symlink_to(root)
    assert read("cats/tabby.png", tmp_path / "link-to-images") == PNG


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("../secret.png", "holds '..'"),
        ("cats/../../secret.png", "holds '..'"),
        ("cats/..", "holds '..'"),
        ("/etc/passwd", "not under this server's image root"),
        ("cats/tabby.png\x00.jpg", "NUL"),
        ("", "must not be empty"),
    ],
)
def test_paths_that_leave_the_root_are_refused_unread(root: Path, path: str, words: str) -> None:
    with pytest.raises(ImageFetchRefusedError, match=words):
        read(path, root)


def test_an_absolute_path_beside_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "images2").mkdir()
    (tmp_path / "images2" / "a.png").write_bytes(PNG)
    with pytest.raises(ImageFetchRefusedError, match="not under"):
        read(tmp_path / "images2" / "a.png", root)
    with pytest.raises(ImageFetchRefusedError, match="not under"):
        read(tmp_path / "secret.png", root)


def test_a_symlink_out_of_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    (root / "out").symlink_to(tmp_path)
    (root / "etc").symlink_to("/etc")
    for path in ("escape.png", "out/secret.png", "etc/hostname", "out"):
        with pytest.raises(ImageFetchRefusedError, match="leads out of the image root"):
            read(path, root)


def test_what_is_no_regular_file_is_refused(root: Path) -> None:
    os.mkfifo(root / "pipe.png")  # opened plainly, reading it would wait for a writer forever
    for path, words in (("cats", "is a directory"), ("pipe.png", "not a regular file"),
                        (".", "is the image root")):
        with pytest.raises(ImageFetchError, match=words):
            read(path, root)


def test_a_missing_or_oversized_file_is_a_typed_error(root: Path) -> None:
    with pytest.raises(ImageFetchError, match="no such file"):
        read("cats/siamese.png", root)
    with pytest.raises(ImageFetchError, match="no such file"):
        read("dogs/rex.png", root)
    with pytest.raises(ImageFetchError, match="no directory"):
        read("cats/tabby.png/inside", root)
    with pytest.raises(ImageFetchError, match=f"{len(PNG):,} bytes, over the limit of 100"):
        read("cats/tabby.png", root, max_bytes=100)
    assert read("cats/tabby.png", root, max_bytes=len(PNG)) == PNG


def test_paths_are_refused_when_no_root_is_set(root: Path) -> None:
    with pytest.raises(ImageFetchRefusedError, match="no image root is set"):
        read_image_source(ImagePath(str(root / "cats" / "tabby.png")), ImageSourcePolicy())
