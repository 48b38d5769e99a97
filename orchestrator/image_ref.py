"""An image a job refers to instead of carrying: a URL or a path the cluster side reads.

Torch-free and Pillow-free: the queue's client and schema build these. Whether a reference
may be read at all (which hosts, which root) is decided where it is read, by the serving
side's `ImageSourcePolicy`, never by the submitter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

MAX_IMAGE_REF_BYTES = 4096  # a URL or a path, as UTF-8


@dataclass(frozen=True, slots=True)
class ImageURL:
    url: str  # http:// or https://


@dataclass(frozen=True, slots=True)
class ImagePath:
    path: str  # relative to the serving side's image root, or absolute under it


# One image of a job: its encoded bytes (JPEG, PNG, WebP or GIF), or a reference to them.
ImageInput: TypeAlias = bytes | ImageURL | ImagePath
