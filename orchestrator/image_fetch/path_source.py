"""Read an `ImagePath` under the policy's image root, and nowhere else.

A path is refused when it holds a NUL or a `..`, or names a place outside the root, before
the file system is asked anything. Symlinks inside the root may be followed; one that leads
out is refused. The resolved path is then opened one directory at a time from the real root,
none of them followed if it became a symlink since (so a swap in between cannot lead out),
and only a regular file is read, up to the size cap.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import PurePosixPath

from orchestrator.image_fetch.errors import ImageFetchError, ImageFetchRefusedError, shown
from orchestrator.image_fetch.policy import ImageSourcePolicy

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK_BYTES = 1 << 20


def read_image_path(path: str, policy: ImageSourcePolicy) -> bytes:
    """The bytes of the regular file `path` names under policy.image_root."""
    root = policy.image_root
    if root is None:
        raise ImageFetchRefusedError(
            f"image path {shown(path)}: this server reads no image paths (no image root is set)"
        )
    parts = _checked_parts(path, root)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, *parts))
    inside = os.path.relpath(real, real_root)
    if inside == os.curdir:
        raise ImageFetchError(f"image path {shown(path)} is the image root, not a file")
    if inside == os.pardir or inside.startswith(os.pardir + os.sep):
        raise ImageFetchRefusedError(
            f"image path {shown(path)} leads out of the image root through a symlink"
        )
    fd = _open_beneath(real_root, inside.split(os.sep), path)
    try:
        return _read_regular_file(fd, path, policy.max_bytes)
    finally:
        os.close(fd)


def _checked_parts(path: str, root: str) -> tuple[str, ...]:
    """The path's components relative to the root; refuses what no honest path holds."""
    if not isinstance(path, str):
        raise ImageFetchRefusedError(f"an image path must be a str, got {type(path).__name__}")
    if not path:
        raise ImageFetchRefusedError("an image path must not be empty")
    if "\x00" in path:
        raise ImageFetchRefusedError(f"image path {shown(path)} holds a NUL character")
    pure = PurePosixPath(path)
    if ".." in pure.parts:
        raise ImageFetchRefusedError(f"image path {shown(path)} holds '..'")
    if not pure.is_absolute():
        return pure.parts
    root_parts = PurePosixPath(os.path.normpath(root)).parts
    if pure.parts[: len(root_parts)] != root_parts:
        raise ImageFetchRefusedError(
            f"image path {shown(path)} is not under this server's image root"
        )
    return pure.parts[len(root_parts) :]


def _open_beneath(real_root: str, names: list[str], path: str) -> int:
    """A descriptor of real_root/names..., no component followed if it is a symlink."""
    fd = os.open(real_root, _DIRECTORY_FLAGS)
    try:
        for name in names[:-1]:
            child = _open_at(name, _DIRECTORY_FLAGS, fd, path)
            os.close(fd)
            fd = child
        return _open_at(names[-1], _FILE_FLAGS, fd, path)
    finally:
        os.close(fd)


def _open_at(name: str, flags: int, dir_fd: int, path: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ImageFetchError(f"image path {shown(path)}: no such file") from None
    except PermissionError:
        raise ImageFetchError(f"image path {shown(path)}: permission denied") from None
    except OSError as error:
        if error.errno == errno.ENOTDIR:
            raise ImageFetchError(f"image path {shown(path)}: a part of it is no directory") \
                from None
        if error.errno == errno.ELOOP:
            # Resolved a moment ago with no symlink left in it: one was put there since.
            raise ImageFetchRefusedError(
                f"image path {shown(path)} changed while it was opened (a symlink appeared)"
            ) from None
        raise ImageFetchError(
            f"image path {shown(path)} cannot be opened ({error.strerror})"
        ) from None


def _read_regular_file(fd: int, path: str, max_bytes: int) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ImageFetchError(f"image path {shown(path)} is {kind}")
    if info.st_size > max_bytes:
        raise ImageFetchError(
            f"image path {shown(path)}: the image is {info.st_size:,} bytes, over the limit of "
            f"{max_bytes:,}"
        )
    chunks: list[bytes] = []
    num_bytes = 0
    try:
        # Up to one byte past the cap: the file may have grown since fstat.
        while chunk := os.read(fd, min(_CHUNK_BYTES, max_bytes + 1 - num_bytes)):
            num_bytes += len(chunk)
            if num_bytes > max_bytes:
                raise ImageFetchError(
                    f"image path {shown(path)}: the image is over the limit of {max_bytes:,} "
                    f"bytes"
                )
            chunks.append(chunk)
    except OSError as error:
        raise ImageFetchError(
            f"image path {shown(path)} cannot be read ({error.strerror})"
        ) from None
    return b"".join(chunks)
