"""Draining without Ray: a drained generator finishes its requests and takes no new ones; the
pipeline's admission follows a changing limit."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.pipeline.admission import Admission
from orchestrator.pipeline.errors import NoActorAvailableError
from orchestrator.pipeline.router import Router
from orchestrator.pipeline.vision_balancer import VisionBalancer


def test_a_draining_generator_takes_no_new_request_and_ends_once_its_requests_do() -> None:
    async def scenario() -> None:
        router = Router(2, max_in_flight=8, affinity_slack=0)
        held = [await router.acquire([]) for _ in range(4)]
        assert sorted(held) == [0, 0, 1, 1]
        (drained,) = router.begin_drain(1)
        assert router.counts().draining == 1 and router.counts().open == 1
        drained_wait = asyncio.create_task(router.wait_drained(drained))
        assert {await router.acquire([]) for _ in range(3)} == {1 - drained}
        await router.release(drained)
        await asyncio.sleep(0)
        assert not drained_wait.done()  # one request still runs on it
        await router.release(drained)
        await drained_wait
        await router.retire(drained)
        assert router.counts().open == 1 and router.counts().draining == 0
        # The emptied slot is the one a new generator gets; it takes requests once open.
        assert await router.add_slot() == drained
        assert router.counts().starting == 1
        await router.open(drained)
        assert await router.acquire([]) == drained

    asyncio.run(scenario())


def test_a_request_alone_never_takes_a_generator_drained_while_it_waited() -> None:
    async def scenario() -> None:
        router = Router(2, max_in_flight=4, affinity_slack=0)
        held = [await router.acquire([]) for _ in range(3)]
        assert held == [0, 1, 0]
        alone = asyncio.create_task(router.acquire_alone())
        await asyncio.sleep(0)
        assert router.is_reserved == [False, True]  # the least loaded, emptying for it
        assert router.begin_drain(1) == [1]  # the scaler drains the very one it waits for
        for index in held:
            await router.release(index)
        assert await alone == 0

    asyncio.run(scenario())


def test_once_every_generator_is_retired_or_gone_waiters_fail() -> None:
    async def scenario() -> None:
        router = Router(2, max_in_flight=1, affinity_slack=0)
        await router.set_gone(0, "is dead")
        (index,) = router.begin_drain(1)
        assert index == 1
        await router.retire(1)
        with pytest.raises(NoActorAvailableError):
            await router.acquire([])

    asyncio.run(scenario())


def test_a_draining_vision_actor_gets_no_new_images() -> None:
    async def scenario() -> None:
        vision = VisionBalancer(2)
        assert await vision.acquire() == 0
        vision.begin_drain(0)  # nothing asked: nothing drained
        (drained,) = vision.begin_drain(1)
        assert drained == 1  # the idle one
        assert [await vision.acquire() for _ in range(3)] == [0, 0, 0]
        await vision.wait_drained(drained)
        await vision.retire(drained)
        assert vision.counts().open == 1

    asyncio.run(scenario())


def test_admission_follows_its_limit_and_a_cancelled_waiter_gives_its_place_back() -> None:
    async def scenario() -> None:
        room = Admission(1)
        await room.acquire()
        waiting = [asyncio.create_task(room.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(task.done() for task in waiting)
        room.set_limit(2)
        await asyncio.sleep(0)
        assert [task.done() for task in waiting] == [True, False, False]
        waiting[1].cancel()
        room.set_limit(1)  # lower: no one is turned out, no one more comes in
        room.release()
        await asyncio.sleep(0)
        assert not waiting[2].done() and room.holders == 1
        room.release()
        await waiting[2]
        assert room.holders == 1

    asyncio.run(scenario())
