"""The scaler loop: look at the queue and the pool, decide (`policy.decide`), act.

Every `interval_s` it reads the backlog from Redis and the pool's slots from the pipeline,
resizes the pipeline's pools to the decision (starting actors, or draining them: a drained
actor finishes its running work before it is killed), and holds room on the cluster for the
warm floor's actors: its share of the cluster's one `request_resources` request, which the
cluster's `WarmFloorKeeper` (warm_floor.py) makes for every scaler together, so servers
scaling on one cluster do not undo each other's floor. A scaler that stops withdraws it.

What it saw and decided is kept in `last` (a `ScalerSnapshot`) and handed to `on_snapshot`;
the desired count per role goes to the `vlmq_actors_desired` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.metrics import definitions as metrics
from orchestrator.pipeline.actor_pool import PoolConfig
from orchestrator.pipeline.slot_counts import PoolCounts
from orchestrator.scaler.backlog import Backlog
from orchestrator.scaler.config import ScalerConfig
from orchestrator.scaler.policy import Decision, PolicyMemory, ScalerInputs, decide
from orchestrator.scaler.warm_floor import ResourceRequest, SharedWarmFloor

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


class WarmFloor(Protocol):
    """Where the scaler holds room for its warm actors (`SharedWarmFloor` on a cluster)."""

    def request(self, request: ResourceRequest) -> None: ...

    def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ScalerSnapshot:
    inputs: ScalerInputs
    counts: PoolCounts  # the pool's slots when the inputs were read
    decision: Decision
    requested: ResourceRequest | None  # None: request_resources is off


class Scaler:
    def __init__(
        self,
        config: ScalerConfig,
        pipeline: ScaledPipeline,
        pool: PoolConfig,
        backlog: BacklogSource,
        *,
        floor: WarmFloor | None = None,
        on_snapshot: Callable[[ScalerSnapshot], None] | None = None,
    ) -> None:
        """`floor` defaults to a share of the cluster's warm floor under a random name;
        `make_scaler` names the share after its server."""
        self.config = config
        self.pipeline = pipeline
        self.pool = pool
        self.backlog = backlog
        self.floor: WarmFloor = floor or SharedWarmFloor(f"scaler-{uuid.uuid4().hex[:8]}")
        self.on_snapshot = on_snapshot
        self.last: ScalerSnapshot | None = None
        self.num_steps = 0
        self._memory = PolicyMemory()
        self._requested: ResourceRequest | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Step every `interval_s` until `stopping` is set; a failed step is logged, not fatal."""
        try:
            while not stopping.is_set():
                try:
                    await self.step()
                except Exception:  # a Redis outage, say: the pool stays as it is meanwhile
                    log.warning("scaler step failed; the pool stays as it is", exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.config.interval_s)
        finally:
            if self._requested is not None:
                try:
                    await asyncio.to_thread(self.floor.release)
                except Exception:  # its share expires on its own
                    log.warning("could not withdraw the warm floor's share", exc_info=True)

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
        if requested is not None:
            await asyncio.to_thread(self.floor.request, requested)  # renews it, too
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
