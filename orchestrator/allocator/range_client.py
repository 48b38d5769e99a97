"""How the rest of the orchestrator gets token ranges: through a client of the allocator actor.

`LeasedRangeClient` is the one to use: it leases blocks of IDs and carves ranges locally, so a
new image costs no round trip; every `sync_every` new ranges it registers them with the actor
and switches to the canonical range of any key another client registered first. Within one
client the same key always gets the same range; across clients they agree after a sync.

It may be used from two threads: `allocate_local` answers what needs no round trip (known
ranges, ranges carved from the lease) at once, while another thread's `allocate` waits on the
actor (a Redis outage can hold a lease call up for as long as the actor retries). A lock guards
the client's state; no round trip is made while holding it.

`ActorRangeClient` asks the actor every time: canonical at once, one round trip per call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

import ray

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.allocator.token_range_allocator import RangeKey
from worker.bounded_lru import BoundedLru
from worker.errors import InvalidAllocationError
from worker.token_range import TokenRange


class RangeClient(Protocol):
    def allocate_many(self, requests: Sequence[RangeKey]) -> list[TokenRange]: ...


class ActorRangeClient:
    def __init__(self, allocator: Any) -> None:
        self._allocator = allocator

    def allocate_many(self, requests: Sequence[RangeKey]) -> list[TokenRange]:
        ranges: list[TokenRange] = ray.get(self._allocator.allocate_many.remote(list(requests)))
        return ranges


class LeasedRangeClient:
    def __init__(self, allocator: Any, config: AllocatorConfig) -> None:
        self.config = config
        self._allocator = allocator
        self._ranges: BoundedLru[RangeKey, TokenRange] = BoundedLru(config.max_keys)
        self._epoch = 0  # newest epoch this client has seen
        self._lease: TokenRange | None = None  # leased IDs not yet carved
        self._unregistered: list[tuple[str, TokenRange]] = []
        self.num_round_trips = 0
        self._lock = threading.Lock()

    def allocate_many(self, requests: Sequence[RangeKey]) -> list[TokenRange]:
        return [self.allocate(key, length) for key, length in requests]

    def allocate(self, key: str, length: int) -> TokenRange:
        self._check_length(length)
        while True:
            with self._lock:
                token_range = self._take(key, length)
            if token_range is not None:
                break
            # The lease is short: lease more (outside the lock), then carve again.
            lease: TokenRange = ray.get(self._allocator.lease.remote(self.config.lease_size))
            with self._lock:
                self.num_round_trips += 1
                if lease.epoch > self._epoch:
                    self._enter_epoch(lease.epoch)
                if lease.epoch == self._epoch:  # else a sync saw a newer epoch meanwhile
                    self._lease = lease
        if self.sync_due:
            self.sync()
        return token_range

    def allocate_local(self, requests: Sequence[RangeKey]) -> list[TokenRange] | None:
        """The ranges, if none needs a round trip to the actor; else None (nothing is lost:
        ranges carved before the one that needed a lease are kept, as `allocate` would)."""
        for _, length in requests:
            self._check_length(length)
        ranges = []
        with self._lock:
            for key, length in requests:
                token_range = self._take(key, length)
                if token_range is None:
                    return None
                ranges.append(token_range)
        return ranges

    @property
    def sync_due(self) -> bool:
        return len(self._unregistered) >= self.config.sync_every

    def sync(self) -> None:
        """Register new ranges with the actor and adopt the canonical ones it answers."""
        with self._lock:
            if not self._unregistered:
                return
            pending, self._unregistered = self._unregistered, []
        try:
            canonical: list[TokenRange] = ray.get(self._allocator.register_many.remote(pending))
        except BaseException:
            with self._lock:  # not registered: the next sync takes them along
                self._unregistered = pending + self._unregistered
            raise
        with self._lock:
            self.num_round_trips += 1
            for (key, _), winner in zip(pending, canonical, strict=True):
                if winner.epoch > self._epoch:
                    self._enter_epoch(winner.epoch)
                if winner.epoch == self._epoch:
                    self._ranges.put((key, winner.length), winner)

    def refresh(self) -> None:
        """Forget every range and the lease: a generator has seen a newer epoch than ours.

        The next allocation leases from the actor again, which is in the newest epoch by then
        (a generator can only see an epoch the actor has opened).
        """
        with self._lock:
            self._ranges.clear()
            self._lease = None
            self._unregistered.clear()

    def _check_length(self, length: int) -> None:
        if not 0 < length <= self.config.lease_size:
            raise InvalidAllocationError(
                f"a range must hold 1 to {self.config.lease_size} IDs, asked for {length}"
            )

    def _take(self, key: str, length: int) -> TokenRange | None:
        """The key's known range, or one carved from the lease and recorded; None if the lease
        is too short. Called with the lock held."""
        known = self._ranges.get((key, length))
        if known is not None:
            return known
        if self._lease is None or self._lease.length < length:
            return None
        carved = TokenRange(self._lease.epoch, self._lease.first, length)
        remaining = self._lease.length - length
        self._lease = TokenRange(carved.epoch, carved.end, remaining) if remaining else None
        self._ranges.put((key, length), carved)
        self._unregistered.append((key, carved))
        return carved

    def _enter_epoch(self, epoch: int) -> None:
        """A newer epoch exists: ranges and IDs of older ones must not be handed out again."""
        self._epoch = epoch
        self._ranges.clear()
        if self._lease is not None and self._lease.epoch < epoch:
            self._lease = None
