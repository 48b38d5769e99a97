"""What an actor reports about itself, for the pipeline, the tests and the dashboard."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from worker.engines import num_features_received


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
    # A generator's prompt tokens looked up in its engine's prefix cache, and those found
    # there (both 0 for an engine that keeps none, and for vision actors).
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0


class ActorCounters:
    """An actor's request counters, and its `ActorStats` from them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.num_active = 0
        self.max_active = 0
        self.num_completed = 0
        self.num_failed = 0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    def count_prefix_cache(self, num_prompt_tokens: int, num_cached_tokens: int) -> None:
        self.prefix_cache_queries += num_prompt_tokens
        self.prefix_cache_hits += num_cached_tokens

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one request (or image) for as long as the block runs."""
        self.num_active += 1
        self.max_active = max(self.max_active, self.num_active)
        try:
            yield
        except Exception:
            self.num_failed += 1
            raise
        else:
            self.num_completed += 1
        finally:
            self.num_active -= 1

    def stats(self) -> ActorStats:
        return ActorStats(
            name=self.name,
            pid=os.getpid(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            num_active=self.num_active,
            max_active=self.max_active,
            num_completed=self.num_completed,
            num_failed=self.num_failed,
            num_features_received=num_features_received(),
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
        )
