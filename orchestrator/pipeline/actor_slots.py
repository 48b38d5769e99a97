"""The slots of one kind of actor, as the router and the vision balancer keep them.

A slot is an actor's place: how many requests it runs, whether it is up, and where it is in its
life. A slot added for a new actor is `starting` until `open`ed; the scaler drains one
(`begin_drain`: no new work, `wait_drained` until it runs nothing) and `retire`s it once its
actor is killed, and a later `add_slot` reuses it. A down actor can be given up on (`set_gone`);
once every slot is gone or retired, callers get `NoActorAvailableError` at once. A late word
about a retired slot (Ray reporting the killed actor) changes nothing.
"""

from __future__ import annotations

import asyncio

from orchestrator.pipeline.actor_load import SlotState
from orchestrator.pipeline.errors import NoActorAvailableError
from orchestrator.pipeline.slot_counts import SlotCounts


class ActorSlots:
    def __init__(self, num_actors: int, role: str) -> None:
        self.role = role  # named in NoActorAvailableError
        self.in_flight = [0] * num_actors
        self.is_up = [True] * num_actors
        self.gone: dict[int, str] = {}  # actors given up on, and why
        # Slots that take no new work: not answering yet, being drained, or emptied.
        self.starting: set[int] = set()
        self.draining: set[int] = set()
        self.retired: set[int] = set()
        self._changed = asyncio.Condition()

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
        """A slot for an actor being started: it takes work once `open`ed."""
        async with self._changed:
            index = min(self.retired) if self.retired else len(self.is_up)
            if index == len(self.is_up):
                self.in_flight.append(0)
                self.is_up.append(True)
                self._grow()
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
        """Up to `count` open actors, the least loaded, that now take no new work."""
        candidates = sorted(
            (i for i in range(len(self.is_up)) if self._is_open(i) and i not in self.gone),
            key=lambda i: (self.in_flight[i], -i),
        )
        chosen = candidates[:max(count, 0)]
        self.draining.update(chosen)
        return chosen

    async def wait_drained(self, index: int) -> None:
        """Return once the draining actor runs nothing (its work ended, one way or another)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight[index] == 0)

    async def retire(self, index: int) -> None:
        """Its actor is gone for good (drained and killed, or never started): an empty slot."""
        async with self._changed:
            self.starting.discard(index)
            self.draining.discard(index)
            self.gone.pop(index, None)
            self.is_up[index] = False
            self._retired(index)
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

    def states(self) -> dict[int, tuple[SlotState, int]]:
        """Each slot that holds an actor (retired ones do not): its state and what it runs."""
        return {i: (self._state(i), self.in_flight[i])
                for i in range(len(self.is_up)) if i not in self.retired}

    def _state(self, index: int) -> SlotState:
        if index in self.gone:
            return SlotState.GONE
        if index in self.starting:
            return SlotState.STARTING
        if index in self.draining:
            return SlotState.DRAINING
        return SlotState.OPEN if self.is_up[index] else SlotState.DOWN

    def _is_open(self, index: int) -> bool:
        return (
            index not in self.starting
            and index not in self.draining
            and index not in self.retired
        )

    def _check_some_left(self) -> None:
        if len(self.gone) + len(self.retired) == len(self.is_up):
            raise NoActorAvailableError(self.role, self.gone)

    def _grow(self) -> None:
        """A subclass's own per-slot state gets one more slot."""

    def _retired(self, index: int) -> None:
        """A subclass's own per-slot state forgets the retired slot."""
