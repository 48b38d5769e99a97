"""An image URL of a batch line as the image a job carries, and the key that groups its lines.

`data:image/...;base64,...` is decoded here (strict base64, at most MAX_IMAGE_BYTES); an
`http://` or `https://` URL and a `file://` URL or plain path become references that the serving
side reads under its own policy (hosts, image root), so nothing here decides whether one may be
read: this only refuses what could never name an image. A string is a plain path when it does
not start with a URL scheme (`letters:`), so a relative path with a colon is written `./a:b.png`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from urllib.parse import unquote, urlsplit

from orchestrator.batches.line_errors import LineErrorCode, LineRefusedError, json_kind
from orchestrator.image_ref import MAX_IMAGE_REF_BYTES, ImageInput, ImagePath, ImageURL
from orchestrator.job_limits import MAX_IMAGE_BYTES, MAX_IMAGES
from worker.errors import JobError

# RFC 3986's scheme: a letter, then letters, digits, "+", "-" or ".", then ":".
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# Base64 of the largest image: checked before decoding, so no oversized buffer is made.
_MAX_BASE64_CHARS = 4 * -(-MAX_IMAGE_BYTES // 3)
# In a URL these can only be a writer's mistake (or an attempt to split a request line).
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


class InvalidImageURLError(JobError):
    """An image URL that names no image vlmq could read; the message says why."""


def image_from_url(url: object) -> ImageInput:
    """The image `url` names: its bytes for a data URI, else a reference to read later."""
    if not isinstance(url, str):
        raise InvalidImageURLError(f"an image URL must be a string, got {json_kind(url)}")
    if not url:
        raise InvalidImageURLError("an image URL must not be empty")
    match = _SCHEME.match(url)
    if match is None:
        return ImagePath(_checked_path(url))
    scheme = match.group(1).lower()
    if scheme == "data":
        return _data_uri_bytes(url)
    if scheme in ("http", "https"):
        return ImageURL(_checked_web_url(url))
    if scheme == "file":
        return ImagePath(_file_url_path(url))
    raise InvalidImageURLError(
        f"image URL scheme {scheme!r} is not supported; use data:image/...;base64, http://, "
        f"https://, file:// or a path"
    )


def line_image(url: object, where: str, num_before: int) -> ImageInput:
    """The image of a line's field `where`, after `num_before` others; refused as the line's
    invalid_image (or too_many_images) error."""
    if num_before >= MAX_IMAGES:
        raise LineRefusedError(
            LineErrorCode.TOO_MANY_IMAGES, f"a line holds at most {MAX_IMAGES} images"
        )
    try:
        return image_from_url(url)
    except InvalidImageURLError as error:
        raise LineRefusedError(LineErrorCode.INVALID_IMAGE, f"{where}: {error}") from None


def image_key(image: ImageInput) -> str:
    """What lines that share this image have in common: its bytes' SHA-256, or its reference."""
    if isinstance(image, ImageURL):
        return "url:" + image.url
    if isinstance(image, ImagePath):
        return "path:" + image.path
    return hashlib.sha256(image).hexdigest()


def _data_uri_bytes(url: str) -> bytes:
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise InvalidImageURLError("a data URI needs a ',' before its data")
    media_type, *parameters = header.split(";")
    media_type = media_type.strip().lower()
    if not parameters or parameters[-1].strip().lower() != "base64":
        raise InvalidImageURLError("a data URI must be base64: data:image/...;base64,...")
    if not media_type.startswith("image/") or media_type == "image/":
        raise InvalidImageURLError(
            f"a data URI must hold an image (image/png, image/jpeg, ...), got "
            f"{media_type or 'no media type'!r}"
        )
    if len(payload) > _MAX_BASE64_CHARS:
        raise InvalidImageURLError(
            f"the image is over the limit of {MAX_IMAGE_BYTES:,} bytes "
            f"({len(payload):,} characters of base64)"
        )
    try:
        # validate=True: characters outside the alphabet (whitespace, URL-safe "-_") and bad
        # padding are refused, not skipped.
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidImageURLError(f"the data URI's base64 is not valid: {error}") from None
    if not data:
        raise InvalidImageURLError("the data URI holds no data")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidImageURLError(
            f"the image is {len(data):,} bytes, over the limit of {MAX_IMAGE_BYTES:,}"
        )
    return data


def _checked_web_url(url: str) -> str:
    _check_ref_size(url, "URL")
    bad = _URL_FORBIDDEN.search(url)
    if bad:
        raise InvalidImageURLError(
            f"an image URL must not contain whitespace or control characters, got "
            f"{bad.group()!r} at character {bad.start()}"
        )
    try:
        host = urlsplit(url).hostname
    except ValueError as error:
        raise InvalidImageURLError(f"the image URL is malformed: {error}") from None
    if not host:
        raise InvalidImageURLError(f"the image URL {url[:80]!r} names no host")
    return url


def _file_url_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidImageURLError(
            f"a file:// URL names a file on this machine; host {parts.netloc[:80]!r} is not "
            f"supported (write file:///path)"
        )
    if parts.query or parts.fragment:
        raise InvalidImageURLError("a file:// URL must not have a query or a fragment")
    try:
        path = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidImageURLError("the file:// URL's %-escapes are not UTF-8") from None
    return _checked_path(path)


def _checked_path(path: str) -> str:
    if not path:
        raise InvalidImageURLError("an image path must not be empty")
    if "\x00" in path:
        raise InvalidImageURLError("an image path must not contain NUL characters")
    _check_ref_size(path, "path")
    return path


def _check_ref_size(text: str, what: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidImageURLError(f"the image {what} is not valid Unicode") from None
    if size > MAX_IMAGE_REF_BYTES:
        raise InvalidImageURLError(
            f"the image {what} is {size:,} bytes, over the limit of {MAX_IMAGE_REF_BYTES:,}"
        )
