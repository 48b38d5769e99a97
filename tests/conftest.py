"""Shared fixtures: a real redis-server per test and one local Ray cluster per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from orchestrator.allocator_config import AllocatorConfig
from orchestrator.private_redis import PrivateRedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedisServer]:
    server = PrivateRedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def allocator_config(redis_server: PrivateRedisServer) -> AllocatorConfig:
    # A namespace of its own, so each test gets its own actor and Redis keys.
    return AllocatorConfig(
        redis_url=redis_server.url,
        namespace=f"test-{uuid.uuid4().hex[:8]}",
        chunk_size=4096,
        lease_size=512,
        redis_retry_seconds=2.0,
    )


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray with two logical GPUs; four logical CPUs so tasks run in several processes."""
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
