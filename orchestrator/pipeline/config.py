"""Everything the pipeline needs to know; defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.image_fetch import ImageSourcePolicy
from orchestrator.pipeline.actor_pool import PoolConfig
from worker.engines import EngineConfig
from worker.images.decoding import ImageLimits


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    engine: EngineConfig
    allocator: AllocatorConfig
    pool: PoolConfig = field(default_factory=PoolConfig)
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    # What an ImageURL or ImagePath may read; by default public URLs only, no paths.
    image_sources: ImageSourcePolicy = field(default_factory=ImageSourcePolicy)
    max_in_flight_per_generator: int = 16  # backpressure bound, per generator actor
    affinity_slack: int = 4  # how much busier an image's generator may be and still get it
    max_attempts: int = 3  # per request, counting each actor that died under it
    feature_cache_bytes: int = 1 << 30  # references to features kept for reuse, by their size
    dedup_images: bool = True  # one vision call per image key; off only to measure its worth
    # Decode/hash tasks. A whole CPU each: with fractions Ray runs more workers than CPUs and
    # ends the extra ones after a second idle, so the next batch waits for new processes.
    cpus_per_image_task: float = 1.0
    ready_timeout_s: float = 120.0  # for every actor to start
    # How long an actor that died may stay down before the pipeline gives up on it; requests
    # that need an actor of its kind then fail with NoActorAvailableError once none is left.
    # An actor Ray reports DEAD (killed with no_restart, restarts exhausted) is given up on
    # at once.
    actor_restart_timeout_s: float = 120.0
    # How long a job waits for the allocator while its Redis is unreachable (new token ranges
    # cannot be issued); past it the job fails with AllocatorStateUnavailableError.
    allocator_outage_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("max_in_flight_per_generator", "max_attempts", "feature_cache_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("ready_timeout_s", "actor_restart_timeout_s", "allocator_outage_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def max_jobs_in_flight(self) -> int:
        """Jobs admitted at once: enough to keep every generator full while images prepare."""
        return 2 * self.max_in_flight_per_generator * self.pool.num_generator_actors
