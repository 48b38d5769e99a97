"""Object references to image features by image key: in flight or done, bounded by bytes.

The cache holds references, never features. A reference is cached the moment its vision call is
made, so jobs that meet an image while its features are still being computed share that call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from orchestrator.image_key import ImageKey


@dataclass(frozen=True, slots=True)
class FeatureEntry:
    features: Any  # ObjectRef[ImageFeatures], for generators
    num_rows: Any  # ObjectRef[int]: awaited to learn that the features exist, or why not
    num_bytes: int  # of the features, known from the layout before they exist
    vision_index: int  # the vision actor computing them


class FeatureCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.num_bytes = 0
        self.num_hits = 0
        self.num_misses = 0
        self._entries: OrderedDict[ImageKey, FeatureEntry] = OrderedDict()

    def get(self, key: ImageKey) -> FeatureEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.num_misses += 1
            return None
        self.num_hits += 1
        self._entries.move_to_end(key)
        return entry

    def peek(self, key: ImageKey) -> FeatureEntry | None:
        """The entry, without counting a hit or refreshing it."""
        return self._entries.get(key)

    def put(self, key: ImageKey, entry: FeatureEntry) -> None:
        self.drop(key)
        self._entries[key] = entry
        self.num_bytes += entry.num_bytes
        # Never evict the entry just added: a job is about to use it.
        while self.num_bytes > self.max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self.num_bytes -= evicted.num_bytes

    def drop(self, key: ImageKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.num_bytes -= entry.num_bytes

    def __len__(self) -> int:
        return len(self._entries)
