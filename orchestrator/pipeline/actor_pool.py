"""Starting the vision and generator actors, each pinned to its share of a GPU.

Actors are named (`{prefix}-vision-0`, `{prefix}-generator-1`, ...) so the Ray dashboard shows
which is which, restarted by Ray when their process dies, and never retried by Ray: the
pipeline decides where a failed request goes next. An actor that asks for more GPUs than the
cluster has waits in Ray's queue; `wait_until_ready` says which ones wait and for what.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray

from worker.actors.fault_injection import FaultInjection
from worker.actors.generator import GeneratorActor, GeneratorActorConfig
from worker.actors.vision import VisionActor, VisionActorConfig
from worker.engines import EngineConfig
from worker.errors import VlmqError


class ActorsNotReadyError(VlmqError):
    """Some actors could not start in time, most often for want of GPUs."""


@dataclass(frozen=True, slots=True)
class PoolConfig:
    num_vision_actors: int = 1
    num_generator_actors: int = 2
    # GPU share per actor: 0.5 lets a vision and a generator actor share one GPU.
    gpus_per_vision_actor: float = 0.5
    gpus_per_generator_actor: float = 0.5
    # Logical CPUs each actor holds while it lives. Ray's default of 1 would let a small
    # cluster's actors starve the image tasks; the GPU share is what places an actor.
    cpus_per_actor: float = 0.0
    name_prefix: str = "vlmq"
    ray_namespace: str = "vlmq"
    generator_faults: FaultInjection = field(default_factory=FaultInjection)

    def __post_init__(self) -> None:
        if self.num_vision_actors < 1 or self.num_generator_actors < 1:
            raise ValueError("a pool needs at least one vision and one generator actor")
        if self.gpus_per_vision_actor < 0 or self.gpus_per_generator_actor < 0:
            raise ValueError("GPU shares cannot be negative")


class ActorPool:
    def __init__(self, config: PoolConfig, engine: EngineConfig) -> None:
        self.config = config
        vision_class: Any = ray.remote(VisionActor)
        generator_class: Any = ray.remote(GeneratorActor)
        common = {
            "namespace": config.ray_namespace,
            "num_cpus": config.cpus_per_actor,
            "max_restarts": -1,
            "max_task_retries": 0,
        }
        self.vision = [
            vision_class.options(
                name=f"{config.name_prefix}-vision-{i}", num_gpus=config.gpus_per_vision_actor,
                **common,
            ).remote(VisionActorConfig(f"{config.name_prefix}-vision-{i}", engine))
            for i in range(config.num_vision_actors)
        ]
        self.generators = [
            generator_class.options(
                name=f"{config.name_prefix}-generator-{i}",
                num_gpus=config.gpus_per_generator_actor,
                **common,
            ).remote(
                GeneratorActorConfig(
                    f"{config.name_prefix}-generator-{i}", engine, config.generator_faults
                )
            )
            for i in range(config.num_generator_actors)
        ]

    @property
    def actors(self) -> list[Any]:
        return [*self.vision, *self.generators]

    def wait_until_ready(self, timeout_s: float) -> None:
        """Return once every actor answers; raise `ActorsNotReadyError` naming those that don't."""
        probes = {
            actor.stats.remote(): name
            for actor, name in zip(self.actors, self._names(), strict=True)
        }
        deadline = time.monotonic() + timeout_s
        pending = list(probes)
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        if pending:
            waiting = [probes[probe] for probe in pending]
            raise ActorsNotReadyError(self._describe_waiting(waiting, timeout_s))
        ray.get(list(probes))  # an actor whose constructor failed raises here

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    def _names(self) -> list[str]:
        prefix = self.config.name_prefix
        return [f"{prefix}-vision-{i}" for i in range(len(self.vision))] + [
            f"{prefix}-generator-{i}" for i in range(len(self.generators))
        ]

    def _describe_waiting(self, waiting: list[str], timeout_s: float) -> str:
        total = ray.cluster_resources().get("GPU", 0)  # type: ignore[no-untyped-call]
        free = ray.available_resources().get("GPU", 0)  # type: ignore[no-untyped-call]
        asked = (
            self.config.num_vision_actors * self.config.gpus_per_vision_actor
            + self.config.num_generator_actors * self.config.gpus_per_generator_actor
        )
        # Not ready after the timeout: waiting for resources, or still loading its model.
        return (
            f"{len(waiting)} actors not ready after {timeout_s:.0f}s (waiting for resources "
            f"or still starting): {', '.join(sorted(waiting))}. The pool asks for {asked:g} "
            f"GPUs; the cluster has {total:g}, {free:g} free"
        )
