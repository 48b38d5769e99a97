"""Which generator runs a request: the least loaded, unless one already holds its images.

A generator that ran an image keeps that image's pages in its prefix cache, so a request that
shares an image goes back to it, unless it is busier than the least-loaded one by more than
`affinity_slack`. No generator gets more than `max_in_flight` requests: callers wait
(backpressure), so a slow stage holds the pipeline back instead of piling work up. A generator
whose actor died is down until it answers again; nothing is routed to it meanwhile.

A request that was running when its actor died is retried *alone* (`acquire_alone`): the
generator takes no other request until it is done. So a poison request that kills its actor
every time can only take itself down on later attempts, never the innocent requests beside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from orchestrator.pipeline.image_key import ImageKey
from worker.bounded_lru import BoundedLru


class Router:
    def __init__(self, num_generators: int, max_in_flight: int, affinity_slack: int) -> None:
        self.in_flight = [0] * num_generators
        self.is_up = [True] * num_generators
        self.is_reserved = [False] * num_generators  # draining for, or running, a lone request
        self.max_in_flight = max_in_flight
        self.affinity_slack = affinity_slack
        self.num_affine = 0  # requests sent where their images were
        self.max_in_flight_seen = 0  # never above max_in_flight: the backpressure bound holds
        self._home: BoundedLru[ImageKey, int] = BoundedLru(100_000)
        self._freed = asyncio.Condition()

    async def acquire(self, keys: Sequence[ImageKey]) -> int:
        """A generator index for a request with these images; waits while all are full."""
        async with self._freed:
            while True:
                index = self._choose(keys)
                if index is not None:
                    self.in_flight[index] += 1
                    self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight[index])
                    for key in keys:
                        self._home.put(key, index)
                    return index
                await self._freed.wait()

    async def acquire_alone(self) -> int:
        """A generator that runs nothing else while the caller's request runs."""
        async with self._freed:
            while True:
                free = [
                    i for i, up in enumerate(self.is_up) if up and not self.is_reserved[i]
                ]
                if free:
                    index = min(free, key=lambda i: self.in_flight[i])
                    break
                await self._freed.wait()
            self.is_reserved[index] = True  # no new requests; the running ones finish
            while self.in_flight[index] or not self.is_up[index]:
                await self._freed.wait()
            self.in_flight[index] += 1
            return index

    async def release(self, index: int, alone: bool = False) -> None:
        async with self._freed:
            self.in_flight[index] -= 1
            if alone:
                self.is_reserved[index] = False
            self._freed.notify_all()

    async def set_up(self, index: int, is_up: bool) -> None:
        async with self._freed:
            self.is_up[index] = is_up
            self._freed.notify_all()

    def _choose(self, keys: Sequence[ImageKey]) -> int | None:
        open_indexes = [
            i
            for i, n in enumerate(self.in_flight)
            if n < self.max_in_flight and self.is_up[i] and not self.is_reserved[i]
        ]
        if not open_indexes:
            return None
        least = min(open_indexes, key=lambda i: self.in_flight[i])
        for key in keys:
            home = self._home.get(key)
            if (
                home is not None
                and home in open_indexes
                and self.in_flight[home] <= self.in_flight[least] + self.affinity_slack
            ):
                self.num_affine += 1
                return home
        return least
