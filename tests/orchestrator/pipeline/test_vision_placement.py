"""Vision actors placed apart from the generators: by a custom resource, by node labels.

The session's one-node cluster gets a second node for these tests, as a vision GPU group
would be: one GPU, the custom resource `vision_gpu`, the label `vlmq/role=vision`, and no
CPUs (the image tasks stay on the head). A vision actor that asks for `vision_gpu` runs there
and holds it until the pipeline ends; one with a label selector runs on the node whose labels
match, and while no node matches it is not placed at all (the pool is not ready, naming it)
until a matching node joins, where it then starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from orchestrator.pipeline.actor_pool import ActorPool, ActorsNotReadyError, PoolConfig
from orchestrator.pipeline.driver import Pipeline
from orchestrator.private_redis import PrivateRedisServer
from tests.support.pipeline_fixtures import jobs_sharing_images, running_pipeline
from tests.support.ray_node import JoinedNode, node_of, state_of
from tests.support.waiting import wait_for
from worker.engines import EngineConfig

VISION_GROUP = {"vlmq/role": "vision"}


@pytest.fixture(scope="module")
def vision_node(ray_cluster: None) -> Iterator[JoinedNode]:
    node = JoinedNode({"vision_gpu": 1}, VISION_GROUP, num_gpus=1)
    try:
        yield node.start()
    finally:
        node.stop()


def free_vision_gpus() -> float:
    return float(ray.available_resources().get("vision_gpu", 0))  # type: ignore[no-untyped-call]


def run_a_few_jobs(pipeline: Pipeline) -> None:
    outcomes = list(pipeline.run(jobs_sharing_images(3, max_new_tokens=4)))
    assert all(outcome.ok for outcome in outcomes), [o.failure for o in outcomes]
    assert pipeline.progress.vision_calls > 0


def test_a_vision_actor_runs_where_its_resource_is_offered_and_holds_it(
    vision_node: JoinedNode, model_dir: Path, redis_server: PrivateRedisServer,
) -> None:
    wait_for(lambda: free_vision_gpus() == 1, "the vision resource free", 60)
    with running_pipeline(
        model_dir, redis_server.url, pool_num_vision_actors=1, pool_num_generator_actors=1,
        pool_vision_resources={"vision_gpu": 1},
    ) as pipeline:
        assert node_of(pipeline.pool.vision[0]) == vision_node.node_id
        wait_for(lambda: free_vision_gpus() == 0, "the vision actor holds the resource", 60)
        run_a_few_jobs(pipeline)
    # Killed with the pipeline, the actor gives the resource back.
    wait_for(lambda: free_vision_gpus() == 1, "the vision resource free again", 60)


def test_a_vision_actor_runs_only_on_a_node_whose_labels_match(
    vision_node: JoinedNode, model_dir: Path, redis_server: PrivateRedisServer,
) -> None:
    with running_pipeline(
        model_dir, redis_server.url, pool_num_vision_actors=1, pool_num_generator_actors=1,
        pool_vision_label_selector=VISION_GROUP,
    ) as pipeline:
        assert node_of(pipeline.pool.vision[0]) == vision_node.node_id
        run_a_few_jobs(pipeline)

    # No node is labelled for OCR: the vision actor waits to be placed, the generator starts.
    config = PoolConfig(
        num_vision_actors=1, num_generator_actors=1, name_prefix=f"ocr-{uuid.uuid4().hex[:6]}",
        vision_label_selector={"vlmq/role": "ocr"},
    )
    pool = ActorPool(config, EngineConfig(str(model_dir)))
    ocr_node: JoinedNode | None = None
    try:
        ray.get(pool.generators[0].stats.remote(), timeout=120)
        with pytest.raises(ActorsNotReadyError) as not_ready:
            pool.wait_until_ready(5.0)
        message = str(not_ready.value)
        assert pool.vision_names[0] in message and pool.generator_names[0] not in message
        assert state_of(pool.vision[0]) == "PENDING_CREATION"
        # Once a node with the label joins, the actor is placed there and starts.
        ocr_node = JoinedNode({}, {"vlmq/role": "ocr"}, num_gpus=1).start()
        pool.wait_until_ready(120)
        assert node_of(pool.vision[0]) == ocr_node.node_id
    finally:
        pool.kill()
        if ocr_node is not None:
            ocr_node.stop()
