"""Object references to image features by image key: in flight or done, bounded by bytes.

The cache holds references, never features. A reference is cached the moment its vision call is
made, so jobs that meet an image while its features are still being computed share that call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.pipeline.image_key import ImageKey
from worker.bounded_lru import BoundedLru


@dataclass(frozen=True, slots=True)
class FeatureEntry:
    features: Any  # ObjectRef[ImageFeatures], for generators
    num_rows: Any  # ObjectRef[int]: awaited to learn that the features exist, or why not
    num_bytes: int  # of the features, known from the layout before they exist
    vision_index: int  # the slot of the vision actor computing them
    vision_actor: Any  # that actor's handle: the slot may hold another one later


class FeatureCache(BoundedLru[ImageKey, FeatureEntry]):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, size_of=lambda entry: entry.num_bytes)
