"""Which vision actor embeds an image: the least busy one that is up.

A vision actor whose process died is down until Ray has it answering again; images wait for an
actor that is up rather than failing against one that is restarting. A down actor can be given
up on (`set_gone`: dead for good, or down past the restart deadline); once every vision actor
is, waiting callers and new ones get `NoActorAvailableError` at once.

Slots come and go as the router's do (see `router.py`): `add_slot`, `open`, `begin_drain`,
`wait_drained`, `retire`.
"""

from __future__ import annotations

import asyncio

from orchestrator.pipeline.errors import NoActorAvailableError
from orchestrator.pipeline.slot_counts import SlotCounts


class VisionBalancer:
    def __init__(self, num_actors: int) -> None:
        self.in_flight = [0] * num_actors
        self.is_up = [True] * num_actors
        self.gone: dict[int, str] = {}  # actors given up on, and why
        # Slots that take no new images: not answering yet, being drained, or emptied.
        self.starting: set[int] = set()
        self.draining: set[int] = set()
        self.retired: set[int] = set()
        self.num_waiting = 0  # callers waiting for an actor that is up (a progress signal)
        self._changed = asyncio.Condition()

    async def acquire(self) -> int:
        async with self._changed:
            while not self._usable():
                if len(self.gone) + len(self.retired) == len(self.is_up):
                    raise NoActorAvailableError("vision", self.gone)
                self.num_waiting += 1
                try:
                    await self._changed.wait()
                finally:
                    self.num_waiting -= 1
            index = min(self._usable(), key=lambda i: self.in_flight[i])
            self.in_flight[index] += 1
            return index

    async def release(self, index: int) -> None:
        async with self._changed:
            self.in_flight[index] -= 1
            self._changed.notify_all()  # a drain may be waiting for it

    async def set_up(self, index: int, is_up: bool) -> None:
        async with self._changed:
            if index in self.retired:
                return  # a late word about an actor the scaler already killed
            self.is_up[index] = is_up
            if is_up:
                self.gone.pop(index, None)
            self._changed.notify_all()

    async def set_gone(self, index: int, why: str) -> None:
        """Give up on a down actor: `why` ends up in the error its waiters get."""
        async with self._changed:
            if index in self.retired:
                return
            self.is_up[index] = False
            self.gone[index] = why
            self._changed.notify_all()

    async def add_slot(self) -> int:
        """A slot for a vision actor being started: it takes images once `open`ed."""
        async with self._changed:
            index = min(self.retired) if self.retired else len(self.is_up)
            if index == len(self.is_up):
                self.in_flight.append(0)
                self.is_up.append(True)
            self.retired.discard(index)
            self.gone.pop(index, None)
            self.is_up[index] = True
            self.starting.add(index)
            return index

    async def open(self, index: int) -> None:
        async with self._changed:
            self.starting.discard(index)
            self._changed.notify_all()

    def begin_drain(self, count: int) -> list[int]:
        """Up to `count` open actors, the least busy, that now take no new images."""
        candidates = sorted(
            (i for i in range(len(self.is_up)) if self._is_open(i) and i not in self.gone),
            key=lambda i: (self.in_flight[i], -i),
        )
        chosen = candidates[:max(count, 0)]
        self.draining.update(chosen)
        return chosen

    async def wait_drained(self, index: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight[index] == 0)

    async def retire(self, index: int) -> None:
        async with self._changed:
            self.starting.discard(index)
            self.draining.discard(index)
            self.gone.pop(index, None)
            self.is_up[index] = False
            self.retired.add(index)
            self._changed.notify_all()

    def counts(self) -> SlotCounts:
        live = [i for i in range(len(self.is_up)) if i not in self.retired and i not in self.gone]
        return SlotCounts(
            open=sum(1 for i in live if self._is_open(i)),
            starting=sum(1 for i in live if i in self.starting),
            draining=sum(1 for i in live if i in self.draining),
            gone=len(self.gone),
        )

    def _usable(self) -> list[int]:
        return [i for i, up in enumerate(self.is_up) if up and self._is_open(i)]

    def _is_open(self, index: int) -> bool:
        return (
            index not in self.starting
            and index not in self.draining
            and index not in self.retired
        )
