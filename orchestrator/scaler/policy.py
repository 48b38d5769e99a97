"""The scaler's decision, as a pure function: what it sees and what it remembers in, counts out.

Per role the work asks for a number of actors (`needed`): generators for the outstanding jobs
(queued, retrying and running here) at `jobs_per_generator` each, plus one more than there are
while a queued job has waited past `max_queue_wait_s`; vision actors in proportion to the
generators. Hysteresis: a role grows at once to what is needed (within its bounds), but shrinks
only once the work has asked for fewer for `idle_s` without a break, so a burst that pauses does
not unload models. The warm floor is the highest count held within the last `warm_s`: what
Ray is asked to keep room for after a scale-down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from orchestrator.scaler.config import RoleBounds, ScalerConfig


class Move(StrEnum):
    UP = "up"  # the work needs more: grow now
    STEADY = "steady"  # the work needs what there is
    COOLING = "cooling"  # the work needs fewer, not for idle_s yet: hold
    DOWN = "down"  # the work has needed fewer for idle_s: shrink
    OVER_BOUND = "over_bound"  # more than the bound allows (it was lowered): shrink now


@dataclass(frozen=True, slots=True)
class ScalerInputs:
    now_s: float  # a monotonic clock
    queued: int  # jobs no server has claimed yet, every lane
    retrying: int  # jobs waiting out a backoff before their next delivery
    running: int  # jobs in flight in this pipeline
    oldest_wait_s: float  # how long the oldest queued job has waited; 0 with none queued
    vision_actors: int  # up or starting, not draining
    generator_actors: int

    def __post_init__(self) -> None:
        for name in ("queued", "retrying", "running", "vision_actors", "generator_actors"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative, got {getattr(self, name)}")
        if self.oldest_wait_s < 0:
            raise ValueError(f"oldest_wait_s cannot be negative, got {self.oldest_wait_s}")

    @property
    def outstanding(self) -> int:
        return self.queued + self.retrying + self.running


@dataclass(frozen=True, slots=True)
class RoleMemory:
    below_since_s: float | None = None  # since when the work has asked for fewer, unbroken
    warm_peak: int = 0  # the highest desired count within warm_s
    warm_until_s: float = -math.inf  # when warm_peak stops holding


@dataclass(frozen=True, slots=True)
class PolicyMemory:
    vision: RoleMemory = field(default_factory=RoleMemory)
    generators: RoleMemory = field(default_factory=RoleMemory)


@dataclass(frozen=True, slots=True)
class RoleDecision:
    current: int
    needed: int  # what the work asks for, before bounds
    desired: int  # what the role should have now, within bounds
    warm: int  # actors whose resources Ray is asked to keep (>= desired, >= the minimum)
    move: Move


@dataclass(frozen=True, slots=True)
class Decision:
    vision: RoleDecision
    generators: RoleDecision
    pressured: bool  # a queued job waited past max_queue_wait_s
    memory: PolicyMemory  # to pass to the next decide()


def decide(config: ScalerConfig, inputs: ScalerInputs, memory: PolicyMemory) -> Decision:
    pressured = inputs.queued > 0 and inputs.oldest_wait_s > config.max_queue_wait_s
    generators_needed = math.ceil(inputs.outstanding / config.jobs_per_generator)
    if pressured:
        generators_needed = max(generators_needed, inputs.generator_actors + 1)
    vision_needed = math.ceil(generators_needed * config.vision_per_generator)
    generators, generator_memory = _role(
        config, config.generators, generators_needed, inputs.generator_actors,
        memory.generators, now_s=inputs.now_s,
    )
    vision, vision_memory = _role(
        config, config.vision, vision_needed, inputs.vision_actors, memory.vision,
        now_s=inputs.now_s,
    )
    return Decision(vision, generators, pressured, PolicyMemory(vision_memory, generator_memory))


def _role(
    config: ScalerConfig, bounds: RoleBounds, needed: int, current: int, memory: RoleMemory,
    *, now_s: float,
) -> tuple[RoleDecision, RoleMemory]:
    target = bounds.clip(needed)
    below_since = None
    if current > bounds.max_actors:
        desired, move = bounds.max_actors, Move.OVER_BOUND
    elif target > current:
        desired, move = target, Move.UP
    elif target == current:
        desired, move = current, Move.STEADY
    else:
        below_since = memory.below_since_s if memory.below_since_s is not None else now_s
        if now_s - below_since >= config.idle_s:
            desired, move, below_since = target, Move.DOWN, None
        else:
            desired, move = current, Move.COOLING
    # Counted from when the actors go, not from the decision to let them go.
    held = max(desired, current)
    if held >= memory.warm_peak or now_s >= memory.warm_until_s:
        peak, until = held, now_s + config.warm_s
    else:
        peak, until = memory.warm_peak, memory.warm_until_s
    warm = bounds.clip(peak)  # a lowered bound lowers the floor at once
    return (
        RoleDecision(current, needed, desired, warm, move),
        RoleMemory(below_since, peak, until),
    )
