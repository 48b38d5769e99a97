"""What an actor reports about itself, for the pipeline, the tests and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ActorStats:
    name: str
    pid: int
    cuda_visible_devices: str | None  # the GPUs Ray gave this actor's process
    num_active: int  # requests (or images) in progress now
    max_active: int  # the most in progress at once: above 1, requests were batched together
    num_completed: int
    num_failed: int
    num_features_received: int  # ImageFeatures this process unpickled
