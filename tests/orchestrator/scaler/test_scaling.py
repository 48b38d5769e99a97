"""The scaler over the real pipeline: the tiny model on a local Ray with two logical GPUs.

A burst of jobs through the queue grows both pools to their bound; once the queue is empty for
`idle_s` they shrink to their minimum (the extra actors drained, then killed); every job ends
exactly once, and a batch after the shrink runs on what is left. (Drains under load, request
by request, are in test_draining.py.) Ray's autoscaler is asked,
through the real `request_resources`, to keep room for the peak (the warm floor).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import ray

from orchestrator.pipeline.slot_counts import PoolCounts
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.serve import ServerThread, make_scaler
from orchestrator.queue.states import JobState
from orchestrator.scaler.config import RoleBounds, ScalerConfig
from orchestrator.scaler.loop import ScalerSnapshot
from orchestrator.scaler.policy import Move
from tests.support.pipeline_fixtures import jobs_sharing_images, running_pipeline
from tests.support.queue_history import check_history
from tests.support.waiting import wait_for

QUEUE = "scaled"


def specs(count: int, prefix: str) -> list[JobSpec]:
    return [
        JobSpec(job.job_id, QUEUE, job.prompt, job.images, job.sampling)
        for job in jobs_sharing_images(count, 16, prefix)
    ]


def sizes(counts: PoolCounts) -> tuple[int, int]:
    return counts.vision.open, counts.generators.open


def test_a_burst_grows_the_pools_to_the_bound_and_an_idle_queue_shrinks_them(
    ray_cluster: None, model_dir: Path, redis_server: PrivateRedisServer,
) -> None:
    namespace = f"sc-{uuid.uuid4().hex[:8]}"
    scaler_config = ScalerConfig(
        vision=RoleBounds(1, 2), generators=RoleBounds(1, 2), jobs_per_generator=4,
        vision_per_generator=1.0, idle_s=3600, warm_s=3600, interval_s=0.1,
    )
    queue_config = QueueConfig(redis_server.url, QUEUE, namespace, idle_wait_s=0.2)
    snapshots: list[ScalerSnapshot] = []
    with running_pipeline(
        model_dir, redis_server.url, pool_num_vision_actors=1, pool_num_generator_actors=1,
        max_in_flight_per_generator=2,
    ) as pipeline, Client(redis_server.url, namespace=namespace) as client:
        scaler = make_scaler(scaler_config, queue_config, pipeline)
        scaler.on_snapshot = snapshots.append
        server = ServerThread(queue_config, pipeline, scaler)
        server.start()
        try:
            assert pipeline.capacity == 4
            batch = client.new_batch()
            receipts = batch.submit_many(specs(80, "burst"))
            wait_for(lambda: sizes(pipeline.actor_counts()) == (2, 2), "both pools at 2", 120)
            assert pipeline.capacity == 8  # the queue server may hold more jobs now
            wait_for(lambda: batch.counts().done, "the burst done", 240)
            history = check_history(client, batch, receipts, QUEUE)
            assert history.count(JobState.SUCCEEDED) == 80
            assert scaler.last is not None and scaler.last.decision.generators.desired == 2

            # The tiny model can end a burst before new actors have loaded, so the idle time
            # is shortened only now (as an operator would): the shrink comes after the burst.
            scaler.config = dataclasses.replace(scaler_config, idle_s=1.0)
            wait_for(lambda: sizes(pipeline.actor_counts()) == (1, 1), "both pools at 1", 60)
            wait_for(lambda: pipeline.actor_counts().generators.draining == 0, "drains end", 60)
            assert pipeline.capacity == 4
            moves = [s.decision.generators.move for s in snapshots]
            assert Move.UP in moves and Move.COOLING in moves and Move.DOWN in moves
            # The warm floor still holds the peak: Ray is asked to keep room for 2 + 2 actors.
            requested = scaler.last.requested if scaler.last else None
            assert requested is not None and len(requested.bundles) == 4
            assert requested.bundles.count({"GPU": 0.5}) == 4

            after = client.new_batch()  # no more than one generator's worth: no growth
            more = after.submit_many(specs(4, "after"))
            wait_for(lambda: after.counts().done, "the batch after the shrink done", 120)
            assert check_history(client, after, more, QUEUE).count(JobState.SUCCEEDED) == 4
            assert sizes(pipeline.actor_counts()) == (1, 1)
        finally:
            server.stop()
            scaler.backlog.close()
            # The drained actors were killed, not left holding GPUs: two of four slots are.
            slots = [*pipeline.pool.vision, *pipeline.pool.generators]
            assert len(slots) == 4
            assert sum(1 for actor in slots if _is_dead(actor)) == 2


def _is_dead(actor: object) -> bool:
    try:
        ray.get(actor.stats.remote(), timeout=30)  # type: ignore[attr-defined]
    except ray.exceptions.RayActorError:
        return True
    return False
