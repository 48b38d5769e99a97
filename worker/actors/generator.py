"""The generator actor: one language engine on one GPU, many requests at once.

An async actor: each `generate` call waits on its engine future without blocking the others,
so the engine's dynamic batching sees every request in flight. The engine's own thread runs
the model; the actor's event loop only waits. Features arrive as object references that Ray
resolves in this process. `ray.cancel` on a call raises `asyncio.CancelledError` in its
coroutine; the call then aborts its request in the engine, which frees its batch slot.

If the engine's thread dies, the engine answers every request with `EngineDiedError`, and the
actor ends its process on the first one: Ray restarts an actor whose process failed (with
`max_restarts`), not one that left through `ray.actor.exit_actor()`, which it takes as an
intentional exit. A live actor over a dead engine would hold its requests for good.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import NoReturn

from worker.actors import metrics
from worker.actors.fault_injection import FaultInjection
from worker.actors.stats import ActorCounters, ActorStats
from worker.engines import EngineConfig, ImageFeatures, start_language_engine
from worker.errors import EngineDiedError
from worker.generation import GenerationRequest, GenerationResult
from worker.sampling_params import SamplingParams
from worker.span import Span

log = logging.getLogger(__name__)

# The exit status of a generator whose engine thread died (os.EX_SOFTWARE: an internal error).
ENGINE_DIED_EXIT_CODE = 70


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
    add_bos: bool | None = None  # None: what the model's own HF tokenizer does


class GeneratorActor:
    def __init__(self, config: GeneratorActorConfig) -> None:
        self.config = config
        self.engine = start_language_engine(config.engine)
        self._counters = ActorCounters(config.name)
        self._report_load()

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
            future = self.engine.submit(request)
            self._report_load()
            try:
                result = await asyncio.wrap_future(future)
                _record_generation(self.config.name, result)
                if result.num_cached_tokens is not None:
                    self._counters.count_prefix_cache(result.num_prompt_tokens,
                                                      result.num_cached_tokens)
                return result
            except asyncio.CancelledError:
                # The wrapper cancels a still-queued future; a running one needs the engine.
                self.engine.abort(future)
                raise
            except EngineDiedError as error:
                _exit_for_restart(self.config.name, error)
            except Exception as error:
                metrics.ACTOR_FAILURES.inc(role="generator", actor=self.config.name,
                                           error_type=type(error).__name__)
                raise
            finally:
                self._report_load()

    def _report_load(self) -> None:
        # Read from the engine now and at every gauge refresh: its thread moves requests from
        # its queue into its batch without the actor knowing.
        name = self.config.name
        metrics.NUM_REQUESTS_RUNNING.sample(lambda: self.engine.load.running,
                                            role="generator", actor=name)
        metrics.NUM_REQUESTS_WAITING.sample(lambda: self.engine.load.waiting, actor=name)

    def stats(self) -> ActorStats:
        # The readiness probe: an engine whose thread died while idle takes its actor down here,
        # not only at the next request.
        if (failure := self.engine.failure) is not None:
            died = EngineDiedError(f"the engine thread died: {failure!r}")
            _exit_for_restart(self.config.name, died)
        return self._counters.stats()


def _record_generation(actor: str, result: GenerationResult) -> None:
    timings = result.timings
    metrics.ENGINE_QUEUE_TIME.observe(timings.queue_s, actor=actor)
    metrics.TIME_TO_FIRST_TOKEN.observe(timings.queue_s + timings.prefill_s, actor=actor)
    metrics.PREFILL_TIME.observe(timings.prefill_s, actor=actor)
    metrics.DECODE_TIME.observe(timings.decode_s, actor=actor)
    metrics.PROMPT_TOKENS.inc(result.num_prompt_tokens, actor=actor)
    metrics.GENERATION_TOKENS.inc(result.num_completion_tokens, actor=actor)
    if result.num_cached_tokens is not None:  # the engine keeps a prefix cache
        metrics.PREFIX_CACHE_QUERIES.inc(result.num_prompt_tokens, actor=actor)
        metrics.PREFIX_CACHE_HITS.inc(result.num_cached_tokens, actor=actor)


def _exit_for_restart(name: str, error: EngineDiedError) -> NoReturn:
    log.critical("generator %s exits so that Ray restarts it: %s", name, error)
    sys.stderr.flush()  # os._exit flushes nothing; the worker's log should say why it went
    os._exit(ENGINE_DIED_EXIT_CODE)
