"""Routing decisions, without Ray: load, affinity, backpressure, down actors, lone requests,
and actors given up on (waiters fail, typed, instead of waiting forever).

Waits are observed through the balancers' own counters (`num_waiting`, `num_waits`), polled
with a deadline, never by sleeping a while and hoping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from orchestrator.pipeline.errors import NoActorAvailableError
from orchestrator.pipeline.image_key import ImageKey
from orchestrator.pipeline.router import Router
from orchestrator.pipeline.vision_balancer import VisionBalancer

A, B = ImageKey("a" * 64), ImageKey("b" * 64)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


def test_least_loaded_then_affinity_within_slack() -> None:
    async def scenario() -> None:
        router = Router(num_generators=2, max_in_flight=10, affinity_slack=0)
        assert await router.acquire([A]) == 0
        assert await router.acquire([B]) == 1
        assert await router.acquire([A]) == 0  # A has pages on 0, and 0 is not busier
        assert await router.acquire([A]) == 1  # now 0 is busier by more than the slack
        assert router.num_affine == 1

    asyncio.run(scenario())


def test_full_generators_make_callers_wait() -> None:
    async def scenario() -> None:
        router = Router(num_generators=1, max_in_flight=2, affinity_slack=0)
        await router.acquire([A])
        await router.acquire([A])
        waiting = asyncio.create_task(router.acquire([B]))
        await until(lambda: router.num_waiting == 1)
        assert not waiting.done()
        await router.release(0)
        assert await asyncio.wait_for(waiting, 1) == 0
        assert router.max_in_flight_seen == 2

    asyncio.run(scenario())


def test_down_generators_get_nothing() -> None:
    async def scenario() -> None:
        router = Router(num_generators=2, max_in_flight=5, affinity_slack=5)
        await router.set_up(0, False)
        assert {await router.acquire([A]) for _ in range(3)} == {1}
        await router.set_up(1, False)
        waiting = asyncio.create_task(router.acquire([A]))
        await until(lambda: router.num_waiting == 1)
        assert not waiting.done()
        await router.set_up(0, True)
        assert await asyncio.wait_for(waiting, 1) == 0

    asyncio.run(scenario())


def test_a_lone_request_waits_for_its_generator_to_drain_and_keeps_it() -> None:
    async def scenario() -> None:
        router = Router(num_generators=1, max_in_flight=5, affinity_slack=0)
        await router.acquire([A])
        alone = asyncio.create_task(router.acquire_alone())
        await until(lambda: router.num_waiting == 1)
        assert not alone.done()  # the running request finishes first
        later = asyncio.create_task(router.acquire([B]))
        await until(lambda: router.num_waiting == 2)
        waits_before = router.num_waits
        await router.release(0)
        assert await asyncio.wait_for(alone, 1) == 0
        # `later` woke up too, looked, and went back to waiting: nothing joins a lone request.
        await until(lambda: router.num_waits == waits_before + 1 and router.num_waiting == 1)
        assert not later.done()
        await router.release(0, alone=True)
        assert await asyncio.wait_for(later, 1) == 0

    asyncio.run(scenario())


def test_waiters_fail_typed_once_every_generator_is_given_up_on() -> None:
    async def scenario() -> None:
        router = Router(num_generators=2, max_in_flight=5, affinity_slack=0)
        await router.set_up(0, False)
        await router.set_up(1, False)
        waiting = asyncio.create_task(router.acquire([A]))
        alone = asyncio.create_task(router.acquire_alone())
        await until(lambda: router.num_waiting == 2)
        waits_before = router.num_waits
        await router.set_gone(0, "is dead for good")
        # One generator is still only down (it may come back): both keep waiting.
        await until(lambda: router.num_waits == waits_before + 2)
        assert not waiting.done() and not alone.done()
        await router.set_gone(1, "has been down for 60 s")
        for task in (waiting, alone):
            with pytest.raises(NoActorAvailableError, match="generator 1 has been down for 60 s"):
                await asyncio.wait_for(task, 1)
        with pytest.raises(NoActorAvailableError, match="generator 0 is dead for good"):
            await router.acquire([B])  # at once: nothing is left to wait for
        await router.set_up(1, True)  # a given-up generator that answers again is used
        assert await router.acquire([B]) == 1

    asyncio.run(scenario())


def test_a_lone_request_chooses_again_when_its_generator_is_given_up_on() -> None:
    async def scenario() -> None:
        router = Router(num_generators=2, max_in_flight=5, affinity_slack=0)
        await router.set_up(1, False)
        await router.acquire([A])  # on 0, which the lone request will wait to drain
        alone = asyncio.create_task(router.acquire_alone())
        await until(lambda: router.num_waiting == 1)
        assert router.is_reserved == [True, False]
        await router.set_gone(0, "is dead for good")
        await router.set_up(1, True)
        assert await asyncio.wait_for(alone, 1) == 1
        assert router.is_reserved == [False, True]

    asyncio.run(scenario())


def test_vision_goes_to_the_least_busy_actor_that_is_up() -> None:
    async def scenario() -> None:
        balancer = VisionBalancer(num_actors=2)
        assert [await balancer.acquire() for _ in range(3)] == [0, 1, 0]
        await balancer.set_up(0, False)
        assert await balancer.acquire() == 1
        await balancer.set_up(1, False)
        waiting = asyncio.create_task(balancer.acquire())
        await until(lambda: balancer.num_waiting == 1)
        assert not waiting.done()  # no actor is up: wait, do not fail
        await balancer.set_up(0, True)
        assert await asyncio.wait_for(waiting, 1) == 0
        await balancer.release(0)
        assert balancer.in_flight == [2, 2]

    asyncio.run(scenario())


def test_vision_waiters_fail_typed_once_every_actor_is_given_up_on() -> None:
    async def scenario() -> None:
        balancer = VisionBalancer(num_actors=1)
        await balancer.set_up(0, False)
        waiting = asyncio.create_task(balancer.acquire())
        await until(lambda: balancer.num_waiting == 1)
        await balancer.set_gone(0, "is dead for good")
        with pytest.raises(NoActorAvailableError, match="no vision actor is up: vision 0 is dead"):
            await asyncio.wait_for(waiting, 1)
        with pytest.raises(NoActorAvailableError):
            await balancer.acquire()
        await balancer.set_up(0, True)
        assert await balancer.acquire() == 0

    asyncio.run(scenario())
