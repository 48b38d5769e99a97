"""Which vision actor embeds an image: the least busy one that is up.

A vision actor whose process died is down until Ray has it answering again; images wait for an
actor that is up rather than failing against one that is restarting. A down actor can be given
up on (`set_gone`: dead for good, or down past the restart deadline); once every vision actor
is, waiting callers and new ones get `NoActorAvailableError` at once.

Slots come and go as the router's do: `actor_slots.py` keeps both (`add_slot`, `open`,
`begin_drain`, `wait_drained`, `retire`).
"""

from __future__ import annotations

from orchestrator.pipeline.actor_slots import ActorSlots


class VisionBalancer(ActorSlots):
    def __init__(self, num_actors: int) -> None:
        super().__init__(num_actors, "vision")
        self.num_waiting = 0  # callers waiting for an actor that is up (a progress signal)

    async def acquire(self) -> int:
        async with self._changed:
            while not self._usable():
                self._check_some_left()
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

    def _usable(self) -> list[int]:
        return [i for i, up in enumerate(self.is_up) if up and self._is_open(i)]
