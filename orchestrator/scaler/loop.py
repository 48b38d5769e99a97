"""The scaler loop: look at the queue and the pool, decide (`policy.decide`), act.

Every `interval_s` it reads the backlog from Redis and the pool's slots from the pipeline,
resizes the pipeline's pools to the decision (starting actors, or draining them: a drained
actor finishes its running work before it is killed), and asks Ray's autoscaler, through
`request_resources`, for room for the warm floor's actors. It is the only caller of
`request_resources` in vlmq: Ray keeps one such request per cluster and each call replaces the
last. So several autoscaling servers on one Ray cluster replace each other's floor (the last to
ask wins; their pools are still sized right, each for its share of the backlog): run one
`vlmq serve --autoscale` per cluster, as the manifests do, to keep the floor exact.

What it saw and decided is kept in `last` (a `ScalerSnapshot`) and handed to `on_snapshot`;
the desired count per role goes to the `vlmq_actors_desired` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ray.autoscaler.sdk import request_resources as ray_request_resources

from orchestrator.metrics import definitions as metrics
from orchestrator.pipeline.actor_pool import PoolConfig
from orchestrator.pipeline.slot_counts import PoolCounts
from orchestrator.scaler.backlog import Backlog
from orchestrator.scaler.config import ScalerConfig
from orchestrator.scaler.policy import Decision, PolicyMemory, ScalerInputs, decide

log = logging.getLogger(__name__)


class ScaledPipeline(Protocol):
    """What the scaler needs of the pipeline (`Pipeline` is one)."""

    @property
    def in_flight(self) -> int: ...

    def actor_counts(self) -> PoolCounts: ...

    def resize(self, vision: int, generators: int) -> Any: ...  # a Future of None


class BacklogSource(Protocol):
    def read(self) -> Backlog: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """What the scaler last asked Ray's autoscaler to keep room for."""

    bundles: tuple[dict[str, float], ...]
    label_selectors: tuple[dict[str, str], ...]


@dataclass(frozen=True, slots=True)
class ScalerSnapshot:
    inputs: ScalerInputs
    counts: PoolCounts  # the pool's slots when the inputs were read
    decision: Decision
    requested: ResourceRequest | None  # None: request_resources is off


# The seam to Ray's autoscaler: (bundles, their label selectors).
RequestResources = Callable[[list[dict[str, float]], list[dict[str, str]]], None]


def request_from_ray(bundles: list[dict[str, float]], selectors: list[dict[str, str]]) -> None:
    ray_request_resources(
        bundles=list(bundles),
        bundle_label_selectors=list(selectors) if any(selectors) else None,
    )


class Scaler:
    def __init__(
        self,
        config: ScalerConfig,
        pipeline: ScaledPipeline,
        pool: PoolConfig,
        backlog: BacklogSource,
        *,
        request_resources: RequestResources = request_from_ray,
        on_snapshot: Callable[[ScalerSnapshot], None] | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.pool = pool
        self.backlog = backlog
        self.request_resources = request_resources
        self.on_snapshot = on_snapshot
        self.last: ScalerSnapshot | None = None
        self.num_steps = 0
        self._memory = PolicyMemory()
        self._requested: ResourceRequest | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Step every `interval_s` until `stopping` is set; a failed step is logged, not fatal."""
        while not stopping.is_set():
            try:
                await self.step()
            except Exception:  # a Redis outage, say: the pool stays as it is meanwhile
                log.warning("scaler step failed; the pool stays as it is", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.config.interval_s)

    async def step(self) -> ScalerSnapshot:
        backlog = await asyncio.to_thread(self.backlog.read)
        counts = await asyncio.to_thread(self.pipeline.actor_counts)
        inputs = ScalerInputs(
            now_s=time.monotonic(),
            queued=backlog.share(backlog.queued),
            retrying=backlog.share(backlog.retrying),
            running=self.pipeline.in_flight,
            oldest_wait_s=backlog.oldest_wait_s,
            vision_actors=counts.vision.serving,
            generator_actors=counts.generators.serving,
        )
        decision = decide(self.config, inputs, self._memory)
        self._memory = decision.memory
        metrics.set_desired_actors("vision", decision.vision.desired)
        metrics.set_desired_actors("generator", decision.generators.desired)
        vision, generators = decision.vision.desired, decision.generators.desired
        if (vision, generators) != (inputs.vision_actors, inputs.generator_actors):
            log.info("scaler: %d -> %d vision, %d -> %d generator actors (%s, %s)",
                     inputs.vision_actors, vision, inputs.generator_actors, generators,
                     decision.vision.move, decision.generators.move)
            await asyncio.wrap_future(self.pipeline.resize(vision, generators))
        requested = self._warm_floor(decision) if self.config.request_resources else None
        if requested is not None and requested != self._requested:
            await asyncio.to_thread(
                self.request_resources, list(requested.bundles), list(requested.label_selectors)
            )
            self._requested = requested
        snapshot = ScalerSnapshot(inputs, counts, decision, self._requested)
        self.last = snapshot
        self.num_steps += 1
        if self.on_snapshot is not None:
            self.on_snapshot(snapshot)
        return snapshot

    def _warm_floor(self, decision: Decision) -> ResourceRequest:
        vision = _bundle(self.pool.gpus_per_vision_actor, self.pool.cpus_per_actor,
                         dict(self.pool.vision_resources))
        generator = _bundle(self.pool.gpus_per_generator_actor, self.pool.cpus_per_actor, {})
        shapes = [(vision, dict(self.pool.vision_label_selector))] * decision.vision.warm + [
            (generator, {})
        ] * decision.generators.warm
        shapes = [(bundle, selector) for bundle, selector in shapes if bundle]  # holds nothing
        return ResourceRequest(
            bundles=tuple(bundle for bundle, _ in shapes),
            label_selectors=tuple(selector for _, selector in shapes),
        )


def _bundle(gpus: float, cpus: float, custom: dict[str, float]) -> dict[str, float]:
    shape = {"GPU": gpus, "CPU": cpus, **custom}
    return {name: amount for name, amount in shape.items() if amount > 0}
