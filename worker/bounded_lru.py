"""A mapping that forgets its least recently used entries once their total size passes a bound.

One class for every bounded cache in vlmq. Each entry's size comes from `size_of`: by default
every entry counts one, so the bound is a number of entries (the allocator's key map, the
router's image homes); a cache of features or embeddings passes their size in bytes. It lives in
`worker/` because both sides use it and `worker/` may not import `orchestrator/`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def count_one(_: object) -> int:
    """The default size of an entry: the bound then counts entries."""
    return 1


class BoundedLru(Generic[K, V]):
    def __init__(self, max_size: int, size_of: Callable[[V], int] = count_one) -> None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.max_size = max_size
        self.size = 0  # the sum of `size_of` over the entries held
        self.num_hits = 0
        self.num_misses = 0
        self.num_evicted = 0  # entries the bound pushed out (not those dropped or cleared)
        self._size_of = size_of
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The value, counted as a hit and made the most recent; None (a miss) if absent."""
        value = self._entries.get(key)
        if value is None:
            self.num_misses += 1
            return None
        self.num_hits += 1
        self._entries.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The value, without counting a hit or refreshing it."""
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        self.drop(key)
        self._entries[key] = value
        self.size += self._size_of(value)
        # Never evict the newest entry: its caller is about to use it, even if it alone is
        # larger than the bound.
        while self.size > self.max_size and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self.size -= self._size_of(evicted)
            self.num_evicted += 1

    def drop(self, key: K) -> None:
        value = self._entries.pop(key, None)
        if value is not None:
            self.size -= self._size_of(value)

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0
