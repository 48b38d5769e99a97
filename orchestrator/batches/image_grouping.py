"""Lines that share an image, put next to each other before they are enqueued.

Claimed together, they reach the router together, and it sends them to the generator that
already holds the image (its features, and with exllamav2 its prefix cache) while that one is
not much busier than the others; scattered through a file, the same lines would arrive when the
image's generator is busy, or after its pages were evicted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

_T = TypeVar("_T")


def group_by_image(items: Sequence[_T], first_image: Callable[[_T], str | None]) -> list[_T]:
    """Items that share a first image next to each other: groups in order of first
    appearance, items in their order within a group; items without images keep their order,
    after the groups."""
    groups: dict[str, list[_T]] = {}
    plain: list[_T] = []
    for item in items:
        key = first_image(item)
        if key is None:
            plain.append(item)
        else:
            groups.setdefault(key, []).append(item)
    return [item for group in groups.values() for item in group] + plain
