"""Finding or starting the one allocator actor of a deployment."""

from __future__ import annotations

from typing import Any

import ray

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.allocator.token_range_allocator import TokenRangeAllocator


def get_or_start_allocator(config: AllocatorConfig) -> Any:
    """The named allocator actor, started here if no process has started it yet.

    Detached, so it outlives the driver that happened to start it; restarted by Ray when its
    process dies, with calls in flight retried (every call is safe to repeat: a repeated call
    at most wastes IDs). It needs no CPU slot, so it never waits behind model actors.
    """
    actor_class = ray.remote(TokenRangeAllocator)
    return actor_class.options(
        name=config.actor_name,
        namespace=config.ray_namespace,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
    ).remote(config)
