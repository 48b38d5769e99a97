"""Shared fixtures: a real redis-server per test, one local Ray per session, tiny tokenizers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.private_redis import PrivateRedisServer
from tests.support.pipeline_fixtures import pipeline_model_dir
from tests.support.tiny_model_dirs import FAMILIES, write_tiny_model_dir
from tests.support.transformers_fixtures import tiny_vlm
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.engines.transformers.model import TransformersVlm
from worker.tiny.tokenizer import TinyTokenizerFamily


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


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_model_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model directory with a tiny tokenizer and config.json, once per family."""
    family: TinyTokenizerFamily = request.param
    return write_tiny_model_dir(tmp_path_factory.mktemp(family), family)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> HFTextTokenizer:
    return HFTextTokenizer.from_model_dir(tiny_model_dir)


@pytest.fixture(scope="session", params=["pixtral", "qwen2-vl"])
def vlm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> TransformersVlm:
    """A tiny random-weight VLM of each family, loaded by the transformers engine."""
    return tiny_vlm(request.param, tmp_path_factory.getbasetemp())


@pytest.fixture
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Pixtral model the pipeline tests run, written once per session."""
    return pipeline_model_dir(tmp_path_factory.getbasetemp())
