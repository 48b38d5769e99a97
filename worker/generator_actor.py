"""The generator actor: one language engine on one GPU, many requests at once.

An async actor: each `generate` call waits on its engine future without blocking the others,
so the engine's dynamic batching sees every request in flight. The engine's own thread runs
the model; the actor's event loop only waits. Features arrive as object references that Ray
resolves in this process.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from worker.actor_stats import ActorStats
from worker.engine import ImageFeatures, num_features_received
from worker.engine_config import EngineConfig, start_language_engine
from worker.fault_injection import FaultInjection
from worker.generation import GenerationRequest, GenerationResult
from worker.sampling import SamplingParams
from worker.span import Span


@dataclass(frozen=True, slots=True)
class GeneratorActorConfig:
    name: str
    engine: EngineConfig
    faults: FaultInjection = field(default_factory=FaultInjection)


@dataclass(frozen=True, slots=True)
class GenerationCall:
    """A request without its image rows; those travel as ImageFeatures references beside it."""

    request_id: str
    prompt: str
    spans: tuple[Span, ...]
    sampling: SamplingParams
    add_bos: bool = True


class GeneratorActor:
    def __init__(self, config: GeneratorActorConfig) -> None:
        self.config = config
        self._engine = start_language_engine(config.engine)
        self._num_active = 0
        self._max_active = 0
        self._num_completed = 0
        self._num_failed = 0

    def __repr__(self) -> str:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"GeneratorActor({self.config.name}, {self.config.engine.kind}, gpus={gpus})"

    async def generate(self, call: GenerationCall, *features: ImageFeatures) -> GenerationResult:
        """Generate one request; `features` are the images of `call.spans`, in order."""
        self.config.faults.before_request(call.prompt)
        self._num_active += 1
        self._max_active = max(self._max_active, self._num_active)
        try:
            request = GenerationRequest(
                request_id=call.request_id,
                prompt=call.prompt,
                spans=call.spans,
                features=tuple(f.rows for f in features),
                sampling=call.sampling,
                add_bos=call.add_bos,
            )
            result = await asyncio.wrap_future(self._engine.submit(request))
        except Exception:
            self._num_failed += 1
            raise
        finally:
            self._num_active -= 1
        self._num_completed += 1
        return result

    def stats(self) -> ActorStats:
        return ActorStats(
            name=self.config.name,
            pid=os.getpid(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            num_active=self._num_active,
            max_active=self._max_active,
            num_completed=self._num_completed,
            num_failed=self._num_failed,
            num_features_received=num_features_received(),
        )
