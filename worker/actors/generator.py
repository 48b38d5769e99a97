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

from worker.actors.fault_injection import FaultInjection
from worker.actors.stats import ActorCounters, ActorStats
from worker.engines import EngineConfig, ImageFeatures, start_language_engine
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
        self._counters = ActorCounters(config.name)

    def __repr__(self) -> str:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"GeneratorActor({self.config.name}, {self.config.engine.kind}, gpus={gpus})"

    async def generate(self, call: GenerationCall, *features: ImageFeatures) -> GenerationResult:
        """Generate one request; `features` are the images of `call.spans`, in order."""
        self.config.faults.before_request(call.prompt)
        with self._counters.track():
            request = GenerationRequest(
                request_id=call.request_id,
                prompt=call.prompt,
                spans=call.spans,
                features=tuple(f.rows for f in features),
                sampling=call.sampling,
                add_bos=call.add_bos,
            )
            return await asyncio.wrap_future(self._engine.submit(request))

    def stats(self) -> ActorStats:
        return self._counters.stats()
