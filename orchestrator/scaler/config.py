"""What the scaler needs to know: bounds per role, thresholds, timings; defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RoleBounds:
    """How many actors of one role (vision, generator) may run: never fewer, never more."""

    min_actors: int = 1
    max_actors: int = 1

    def __post_init__(self) -> None:
        if self.min_actors < 1:
            # The pipeline cannot run a job without an actor of each role.
            raise ValueError(f"min_actors must be at least 1, got {self.min_actors}")
        if self.max_actors < self.min_actors:
            raise ValueError(
                f"max_actors ({self.max_actors}) is below min_actors ({self.min_actors})"
            )

    def clip(self, count: int) -> int:
        return max(self.min_actors, min(self.max_actors, count))


@dataclass(frozen=True, slots=True)
class ScalerConfig:
    vision: RoleBounds = RoleBounds(1, 1)
    generators: RoleBounds = RoleBounds(1, 2)
    # Outstanding jobs (queued, retrying, running here) one generator is sized for: more per
    # generator than this scales up at once. The pipeline holds 2 * max_in_flight_per_generator
    # per generator, so that is the natural value.
    jobs_per_generator: float = 32.0
    # Vision actors per generator actor when jobs carry images (0.5: one per two generators).
    vision_per_generator: float = 0.5
    # Deadline pressure: a queued job older than this adds a generator (and its share of
    # vision actors) beyond what the backlog asks for, each decision, up to the bound.
    max_queue_wait_s: float = 60.0
    # Scale down only after the work asked for fewer actors for this long without a break
    # (an empty queue asks for the minimum).
    idle_s: float = 300.0
    # After a scale-down, Ray is still asked (request_resources) to keep room for the
    # highest count of the last warm_s, so a short gap does not hand the GPUs back.
    warm_s: float = 600.0
    interval_s: float = 5.0  # how often the scaler looks and decides
    # Ask Ray's autoscaler for the actors' resources (no-op on a cluster without one).
    request_resources: bool = True

    def __post_init__(self) -> None:
        for name in ("jobs_per_generator", "max_queue_wait_s", "interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("vision_per_generator", "idle_s", "warm_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
