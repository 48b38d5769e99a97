"""Which vision actor embeds an image: the least busy one that is up.

A vision actor whose process died is down until Ray has it answering again; images wait for an
actor that is up rather than failing against one that is restarting.
"""

from __future__ import annotations

import asyncio


class VisionBalancer:
    def __init__(self, num_actors: int) -> None:
        self.in_flight = [0] * num_actors
        self.is_up = [True] * num_actors
        self._changed = asyncio.Condition()

    async def acquire(self) -> int:
        async with self._changed:
            while not any(self.is_up):
                await self._changed.wait()
            up = [i for i, is_up in enumerate(self.is_up) if is_up]
            index = min(up, key=lambda i: self.in_flight[i])
            self.in_flight[index] += 1
            return index

    async def release(self, index: int) -> None:
        async with self._changed:
            self.in_flight[index] -= 1

    async def set_up(self, index: int, is_up: bool) -> None:
        async with self._changed:
            self.is_up[index] = is_up
            self._changed.notify_all()
