"""The state each slot reports (`ActorSlots.states`), through its whole life: what `vlmq status`
shows of every actor, beside the requests it runs."""

from __future__ import annotations

import asyncio

from orchestrator.pipeline.actor_load import SlotState
from orchestrator.pipeline.actor_slots import ActorSlots


def test_a_slot_reports_each_state_of_its_life_and_a_retired_one_is_not_shown() -> None:
    async def scenario() -> list[dict[int, tuple[SlotState, int]]]:
        slots = ActorSlots(2, "generator")
        seen = [slots.states()]
        slots.in_flight[0] = 3
        added = await slots.add_slot()
        seen.append(slots.states())
        await slots.open(added)
        await slots.set_up(1, False)
        seen.append(slots.states())
        await slots.set_gone(1, "dead for good")
        assert slots.begin_drain(1) == [added]  # the least loaded open one
        seen.append(slots.states())
        await slots.retire(added)
        seen.append(slots.states())
        return seen

    initial, grown, one_down, draining, retired = asyncio.run(scenario())
    assert initial == {0: (SlotState.OPEN, 0), 1: (SlotState.OPEN, 0)}
    assert grown == {0: (SlotState.OPEN, 3), 1: (SlotState.OPEN, 0), 2: (SlotState.STARTING, 0)}
    assert one_down[1] == (SlotState.DOWN, 0) and one_down[2] == (SlotState.OPEN, 0)
    assert draining == {0: (SlotState.OPEN, 3), 1: (SlotState.GONE, 0),
                        2: (SlotState.DRAINING, 0)}
    assert retired == {0: (SlotState.OPEN, 3), 1: (SlotState.GONE, 0)}
