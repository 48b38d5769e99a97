"""The pool's GPU shares are checked before any actor starts; the restart probe has a deadline.

Packing is plain arithmetic in Ray's units (1/10,000 of a GPU). The probe runs against real
Ray actors: one killed with `no_restart` (Ray reports it DEAD: given up on at once) and one that
never answers (given up on at its deadline).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import pytest
import ray

from orchestrator.pipeline.actor_pool import (
    ActorPool,
    PoolConfig,
    PoolPlacementError,
    actor_is_dead,
    check_pool_fits,
    gpus_needed,
    wait_until_up,
)
from tests.support.waiting import wait_for
from worker.engines import EngineConfig


def pool(num_vision: int, num_generators: int, vision: float, generator: float) -> PoolConfig:
    return PoolConfig(
        num_vision_actors=num_vision,
        num_generator_actors=num_generators,
        gpus_per_vision_actor=vision,
        gpus_per_generator_actor=generator,
        name_prefix=f"pool-{uuid.uuid4().hex[:6]}",
    )


@pytest.mark.parametrize(
    ("config", "needed"),
    [
        (pool(1, 2, 0.5, 0.5), 2),  # the default: three halves on two GPUs
        (pool(1, 2, 2 / 3, 2 / 3), 3),  # 2/3 + 2/3 > 1: one per GPU
        (pool(3, 3, 1 / 3, 1 / 3), 2),  # 3,333 units each: three fit in 10,000
        (pool(1, 3, 0.25, 0.75), 3),  # one GPU takes 0.25 + 0.75, the others one 0.75 each
        (pool(1, 1, 1, 2), 3),  # whole shares take whole GPUs
        (pool(2, 1, 0, 0.5), 1),  # no GPU for vision
    ],
)
def test_gpus_needed_packs_shares_one_gpu_at_a_time(config: PoolConfig, needed: int) -> None:
    assert gpus_needed(config) == needed


def test_shares_that_cannot_pack_are_refused_with_why() -> None:
    config = pool(1, 2, 2 / 3, 2 / 3)
    with pytest.raises(PoolPlacementError, match="must fit on one GPU") as raised:
        check_pool_fits(config, cluster_gpus=2)
    assert "need 3 GPUs" in str(raised.value) and "the cluster has 2" in str(raised.value)
    check_pool_fits(config, cluster_gpus=3)
    check_pool_fits(pool(1, 2, 0.5, 0.5), cluster_gpus=2)


def test_a_share_above_one_gpu_must_be_whole() -> None:
    with pytest.raises(ValueError, match="whole number of GPUs"):
        pool(1, 1, 1.5, 0.5)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("ray_cluster")
def test_a_pool_that_cannot_pack_fails_before_any_actor_starts(model_dir: Path) -> None:
    config = pool(1, 2, 2 / 3, 2 / 3)  # on the session's two logical GPUs
    with pytest.raises(PoolPlacementError, match="must fit on one GPU"):
        ActorPool(config, EngineConfig(str(model_dir)))
    with pytest.raises(ValueError):  # nothing was started to wait in Ray's queue
        ray.get_actor(f"{config.name_prefix}-vision-0", namespace=config.ray_namespace)


class Answering:
    """A stand-in actor with the `stats` method the probe calls; it can refuse to answer."""

    def __init__(self, hang: bool) -> None:
        self._hang = hang

    def stats(self) -> int:
        if self._hang:
            threading.Event().wait()  # never answers, like an actor stuck restarting
        return 0


def start_answering(hang: bool) -> object:
    return ray.remote(Answering).options(num_cpus=0, max_restarts=-1).remote(hang)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("ray_cluster")
def test_the_probe_gives_up_at_once_on_an_actor_ray_reports_dead() -> None:
    actor = start_answering(hang=False)
    ray.get(actor.stats.remote())  # type: ignore[attr-defined]
    ray.kill(actor, no_restart=True)  # type: ignore[arg-type]
    # ray.kill only sends the kill: until Ray has it DEAD, the old process may still answer.
    wait_for(lambda: actor_is_dead(actor), "Ray reports the killed actor DEAD", timeout_s=30)
    reasons: list[str] = []

    async def give_up(why: str) -> None:
        reasons.append(why)

    # A deadline far beyond the test's timeout: only Ray's DEAD can end the wait in time.
    came_back = asyncio.run(wait_until_up(actor, timeout_s=3600, give_up=give_up))
    assert came_back is False
    assert len(reasons) == 1 and "dead for good" in reasons[0]


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("ray_cluster")
def test_the_probe_gives_up_on_an_actor_that_stays_down_past_its_deadline() -> None:
    actor = start_answering(hang=True)
    reasons: list[str] = []

    async def scenario() -> None:
        given_up = asyncio.Event()

        async def give_up(why: str) -> None:
            reasons.append(why)
            given_up.set()

        probe = asyncio.create_task(wait_until_up(actor, timeout_s=1.0, give_up=give_up))
        await asyncio.wait_for(given_up.wait(), 30)
        assert not probe.done()  # it keeps asking: a slow restart may still come back
        probe.cancel()

    try:
        asyncio.run(scenario())
    finally:
        ray.kill(actor, no_restart=True)  # type: ignore[arg-type]
    assert reasons == ["has been down for 1 s (restarts exhausted, or it cannot be placed again?)"]
