"""Routing decisions, without Ray: load, affinity, backpressure, down actors, lone requests."""

from __future__ import annotations

import asyncio

from orchestrator.pipeline.image_key import ImageKey
from orchestrator.pipeline.router import Router
from orchestrator.pipeline.vision_balancer import VisionBalancer

A, B = ImageKey("a" * 64), ImageKey("b" * 64)


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
        await asyncio.sleep(0.05)
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
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await router.set_up(0, True)
        assert await asyncio.wait_for(waiting, 1) == 0

    asyncio.run(scenario())


def test_a_lone_request_waits_for_its_generator_to_drain_and_keeps_it() -> None:
    async def scenario() -> None:
        router = Router(num_generators=1, max_in_flight=5, affinity_slack=0)
        await router.acquire([A])
        alone = asyncio.create_task(router.acquire_alone())
        await asyncio.sleep(0.05)
        assert not alone.done()  # the running request finishes first
        later = asyncio.create_task(router.acquire([B]))
        await router.release(0)
        assert await asyncio.wait_for(alone, 1) == 0
        await asyncio.sleep(0.05)
        assert not later.done()  # nothing joins a lone request
        await router.release(0, alone=True)
        assert await asyncio.wait_for(later, 1) == 0

    asyncio.run(scenario())


def test_vision_goes_to_the_least_busy_actor_that_is_up() -> None:
    async def scenario() -> None:
        balancer = VisionBalancer(num_actors=2)
        assert [await balancer.acquire() for _ in range(3)] == [0, 1, 0]
        await balancer.set_up(0, False)
        assert await balancer.acquire() == 1
        await balancer.set_up(1, False)
        waiting = asyncio.create_task(balancer.acquire())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no actor is up: wait, do not fail
        await balancer.set_up(0, True)
        assert await asyncio.wait_for(waiting, 1) == 0
        await balancer.release(0)
        assert balancer.in_flight == [2, 2]

    asyncio.run(scenario())
