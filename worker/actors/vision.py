"""The vision actor: one vision engine on one GPU (or a fraction of one).

A plain class; `ray.remote` wraps it where it is started (`orchestrator/pipeline/actor_pool.py`).
`embed` returns two objects (Ray `num_returns=2`): the ImageFeatures, which a generator reads
from the object store (or, under Ray's 100 KiB inline limit, inline with the call), and their
row count, small enough for the caller to await: it tells the caller that the features are
ready, or raises what went wrong, without moving the features.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from PIL import Image

from worker.actors import metrics
from worker.actors.fault_injection import FaultInjection
from worker.actors.stats import ActorCounters, ActorStats
from worker.engines import EngineConfig, ImageFeatures, start_vision_engine


@dataclass(frozen=True, slots=True)
class VisionActorConfig:
    name: str
    engine: EngineConfig
    faults: FaultInjection = field(default_factory=FaultInjection)


class VisionActor:
    def __init__(self, config: VisionActorConfig) -> None:
        self.config = config
        self._engine = start_vision_engine(config.engine)
        self._counters = ActorCounters(config.name)

    def __repr__(self) -> str:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"VisionActor({self.config.name}, {self.config.engine.kind}, gpus={gpus})"

    def embed(self, image: Image.Image) -> tuple[ImageFeatures, int]:
        name = self.config.name
        started = time.perf_counter()
        try:
            with self._counters.track():
                metrics.NUM_REQUESTS_RUNNING.set(self._counters.num_active, role="vision",
                                                 actor=name)
                features = self._engine.embed(image)
        except Exception as error:
            metrics.ACTOR_FAILURES.inc(role="vision", actor=name, error_type=type(error).__name__)
            raise
        finally:
            metrics.NUM_REQUESTS_RUNNING.set(self._counters.num_active, role="vision", actor=name)
        metrics.VISION_CALLS.inc(actor=name)
        metrics.VISION_TIME.observe(time.perf_counter() - started, actor=name)
        return features, features.layout.num_image_rows

    def stats(self) -> ActorStats:
        return self._counters.stats()
