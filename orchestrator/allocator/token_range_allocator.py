"""The cluster-wide token-range allocator: one named Ray actor per deployment.

It hands out content-addressed ranges (`allocate_many`), leases blocks of IDs to clients that
carve ranges locally (`lease`), and keeps one canonical range per image key for clients to
converge on (`register_many`). IDs come from blocks reserved in the `IdLedger` first, so every
ID handed out is already below the high-water mark in Redis.

A plain class: `ray.remote` wraps it where it is started (`orchestrator/allocator/handle.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.allocator.id_ledger import IdLedger
from orchestrator.metrics import definitions as metrics
from worker.bounded_lru import BoundedLru
from worker.errors import InvalidAllocationError
from worker.token_range import TokenRange

# What a range is remembered under: the image key and the number of rows it was asked for.
RangeKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class AllocatorStats:
    epoch: int  # epoch of the block IDs are now carved from; 0 before the first reservation
    num_keys: int  # entries in the key -> range map
    num_evicted: int  # entries the map's size bound pushed out
    num_allocated: int  # fresh ranges carved for keys
    num_reused: int  # requests answered from the map
    num_leased: int  # blocks handed to clients
    num_reservations: int  # writes to Redis
    pid: int  # the actor's process, for operators and failure tests


class TokenRangeAllocator:
    def __init__(self, config: AllocatorConfig, ledger: IdLedger | None = None) -> None:
        self.config = config
        self._ledger = ledger or IdLedger(config)
        self._ranges: BoundedLru[RangeKey, TokenRange] = BoundedLru(config.max_keys)
        self._epoch = 0  # epoch of the last reservation; 0 before the first
        self._free: TokenRange | None = None  # reserved IDs not yet handed out
        self._num_allocated = 0
        self._num_reused = 0
        self._num_leased = 0
        self._num_reservations = 0

    def __repr__(self) -> str:
        return (
            f"TokenRangeAllocator({self.config.namespace}, epoch={self._epoch}, "
            f"keys={len(self._ranges)})"
        )

    def allocate_many(self, requests: Sequence[RangeKey]) -> list[TokenRange]:
        """The range for each (image key, length): the one it had, or a fresh one."""
        return [self._allocate(key, length) for key, length in requests]

    def lease(self, num_ids: int) -> TokenRange:
        """A block of unused IDs for a client to carve ranges from without round trips."""
        self._check_length(num_ids)
        self._num_leased += 1
        metrics.ALLOCATOR_LEASES.inc()
        return self._carve(num_ids)

    def register_many(self, ranges: Sequence[tuple[str, TokenRange]]) -> list[TokenRange]:
        """Canonical ranges for ranges clients carved from their leases.

        The first range registered for a key wins; a client that carved another range for the
        same key gets the winner back and uses it from then on. A range from an older epoch is
        not adopted: the key gets a range in the current epoch instead.
        """
        canonical = []
        for key, token_range in ranges:
            range_key = (key, token_range.length)
            known = self._current(range_key)
            if known is None:
                if token_range.epoch == self._epoch:
                    self._ranges.put(range_key, token_range)
                    metrics.ALLOCATOR_RANGES.inc()
                    known = token_range
                else:
                    known = self._allocate(key, token_range.length)
            canonical.append(known)
        return canonical

    def stats(self) -> AllocatorStats:
        return AllocatorStats(
            epoch=self._epoch,
            num_keys=len(self._ranges),
            num_evicted=self._ranges.num_evicted,
            num_allocated=self._num_allocated,
            num_reused=self._num_reused,
            num_leased=self._num_leased,
            num_reservations=self._num_reservations,
            pid=os.getpid(),
        )

    def _allocate(self, key: str, length: int) -> TokenRange:
        self._check_length(length)
        known = self._current((key, length))
        if known is not None:
            self._num_reused += 1
            return known
        token_range = self._carve(length)
        self._ranges.put((key, length), token_range)
        self._num_allocated += 1
        metrics.ALLOCATOR_RANGES.inc()
        return token_range

    def _current(self, range_key: RangeKey) -> TokenRange | None:
        """The remembered range, if it belongs to the epoch IDs are carved from now."""
        known = self._ranges.get(range_key)
        if known is None or known.epoch != self._epoch:
            return None
        return known

    def _carve(self, length: int) -> TokenRange:
        if self._free is None or self._free.length < length:
            # What is left of the old block is abandoned: unused IDs cost nothing.
            self._reserve(max(length, self.config.chunk_size))
        assert self._free is not None
        carved = TokenRange(self._free.epoch, self._free.first, length)
        remaining = self._free.length - length
        self._free = TokenRange(self._free.epoch, carved.end, remaining) if remaining else None
        return carved

    def _reserve(self, num_ids: int) -> None:
        block = self._ledger.reserve(num_ids).block
        self._num_reservations += 1
        if block.epoch != self._epoch:
            # Ranges of an older epoch may share numbers with new ones: forget them all.
            self._ranges.clear()
        self._epoch = block.epoch
        metrics.ALLOCATOR_EPOCH.set(self._epoch)
        self._free = block

    def _check_length(self, length: int) -> None:
        if not 0 < length <= self.config.chunk_size:
            raise InvalidAllocationError(
                f"a range must hold 1 to {self.config.chunk_size} IDs, asked for {length}"
            )
