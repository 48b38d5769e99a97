"""Which generator runs a request: the least loaded, unless one already holds its images.

A generator that ran an image keeps that image's pages in its prefix cache, so a request that
shares an image goes back to it, unless it is busier than the least-loaded one by more than
`affinity_slack`. No generator gets more than `max_in_flight` requests: callers wait
(backpressure), so a slow stage holds the pipeline back instead of piling work up. A generator
whose actor died is down until it answers again; nothing is routed to it meanwhile.

A down generator can be given up on (`set_gone`): the driver's restart probe does that when Ray
reports the actor dead for good, or when it stays down past its deadline. Once every generator
is given up on, callers waiting for one, and callers to come, get `NoActorAvailableError` at
once instead of waiting forever; a given-up generator that answers again (`set_up`) is used
again.

The pool can change size while it runs (the scaler): a new generator gets a slot (`add_slot`:
a retired one again, or a new one at the end), takes requests once it answers (`open`); a
drained one (`drain`) takes no new requests, and once its running ones end it is killed and its
slot `retire`d. Slots are never removed, so an index names one generator for as long as it
runs.

A request that was running when its actor died is retried *alone* (`acquire_alone`): the
generator takes no other request until it is done. So a poison request that kills its actor
every time can only take itself down on later attempts, never the innocent requests beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.pipeline.actor_slots import ActorSlots
from orchestrator.pipeline.image_key import ImageKey
from worker.bounded_lru import BoundedLru


class Router(ActorSlots):
    def __init__(self, num_generators: int, max_in_flight: int, affinity_slack: int) -> None:
        super().__init__(num_generators, "generator")
        self.is_reserved = [False] * num_generators  # draining for, or running, a lone request
        self.max_in_flight = max_in_flight
        self.affinity_slack = affinity_slack
        self.num_affine = 0  # requests sent where their images were
        self.max_in_flight_seen = 0  # never above max_in_flight: the backpressure bound holds
        self.num_waiting = 0  # callers waiting for a generator now (a progress signal)
        self.num_waits = 0  # times a caller began to wait (a progress signal)
        self._home: BoundedLru[ImageKey, int] = BoundedLru(100_000)

    async def acquire(self, keys: Sequence[ImageKey]) -> int:
        """A generator index for a request with these images; waits while all are full.

        Raises `NoActorAvailableError` once every generator is given up on.
        """
        async with self._changed:
            while True:
                self._check_some_left()
                index = self._choose(keys)
                if index is not None:
                    self.in_flight[index] += 1
                    self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight[index])
                    for key in keys:
                        self._home.put(key, index)
                    return index
                await self._wait()

    async def acquire_alone(self) -> int:
        """A generator that runs nothing else while the caller's request runs."""
        async with self._changed:
            while True:
                self._check_some_left()
                free = [
                    i for i, up in enumerate(self.is_up)
                    if up and not self.is_reserved[i] and self._is_open(i)
                ]
                if not free:
                    await self._wait()
                    continue
                index = min(free, key=lambda i: self.in_flight[i])
                self.is_reserved[index] = True  # no new requests; the running ones finish
                try:
                    while (self.in_flight[index] or not self.is_up[index]) and (
                        index not in self.gone
                    ):
                        await self._wait()
                except BaseException:
                    self.is_reserved[index] = False
                    raise
                if index in self.gone or not self._is_open(index):
                    # Given up on (or drained by the scaler) while it emptied: choose again
                    # (or fail, if none is left).
                    self.is_reserved[index] = False
                    continue
                self.in_flight[index] += 1
                return index

    async def release(self, index: int, alone: bool = False) -> None:
        async with self._changed:
            self.in_flight[index] -= 1
            if alone:
                self.is_reserved[index] = False
            self._changed.notify_all()

    def _grow(self) -> None:
        self.is_reserved.append(False)

    def _retired(self, index: int) -> None:
        self.is_reserved[index] = False

    async def _wait(self) -> None:
        self.num_waiting += 1
        self.num_waits += 1
        try:
            await self._changed.wait()
        finally:
            self.num_waiting -= 1

    def _choose(self, keys: Sequence[ImageKey]) -> int | None:
        open_indexes = [
            i
            for i, n in enumerate(self.in_flight)
            if n < self.max_in_flight and self.is_up[i] and not self.is_reserved[i]
            and self._is_open(i)
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
