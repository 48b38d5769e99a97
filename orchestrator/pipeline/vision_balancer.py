"""Which vision actor embeds an image: the least busy one that is up.

A vision actor whose process died is down until Ray has it answering again; images wait for an
actor that is up rather than failing against one that is restarting. A down actor can be given
up on (`set_gone`: dead for good, or down past the restart deadline); once every vision actor
is, waiting callers and new ones get `NoActorAvailableError` at once.
"""

from __future__ import annotations

import asyncio

from orchestrator.pipeline.errors import NoActorAvailableError


class VisionBalancer:
    def __init__(self, num_actors: int) -> None:
        self.in_flight = [0] * num_actors
        self.is_up = [True] * num_actors
        self.gone: dict[int, str] = {}  # actors given up on, and why
        self.num_waiting = 0  # callers waiting for an actor that is up (a progress signal)
        self._changed = asyncio.Condition()

    async def acquire(self) -> int:
        async with self._changed:
            while not any(self.is_up):
                if len(self.gone) == len(self.is_up):
                    raise NoActorAvailableError("vision", self.gone)
                self.num_waiting += 1
                try:
                    await self._changed.wait()
                finally:
                    self.num_waiting -= 1
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
            if is_up:
                self.gone.pop(index, None)
            self._changed.notify_all()

    async def set_gone(self, index: int, why: str) -> None:
        """Give up on a down actor: `why` ends up in the error its waiters get."""
        async with self._changed:
            self.is_up[index] = False
            self.gone[index] = why
            self._changed.notify_all()
