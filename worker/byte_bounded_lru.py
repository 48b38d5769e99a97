"""A mapping that forgets its least recently used entries past a bound on their total bytes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteBoundedLru(Generic[K, V]):
    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self.num_bytes = 0
        self.num_hits = 0
        self.num_misses = 0
        self._size_of = size_of
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
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
        self.num_bytes += self._size_of(value)
        # Never evict the newest entry: its caller is about to use it, even if it alone is
        # larger than the bound.
        while self.num_bytes > self.max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self.num_bytes -= self._size_of(evicted)

    def drop(self, key: K) -> None:
        value = self._entries.pop(key, None)
        if value is not None:
            self.num_bytes -= self._size_of(value)

    def clear(self) -> None:
        self._entries.clear()
        self.num_bytes = 0
