"""Two servers, as two `vlmq serve`s would, scaling one queue side by side.

Each server has its own pipeline (its own actors: distinct name prefixes) and its own scaler;
both share the cluster's allocator, as two servers of one deployment do. A burst on the shared
queue is sized by each scaler for its share (the backlog divided by the servers heard from):
the burst alone asks for more generators than the bound, yet neither server grows past what
its half asks for. Every job ends exactly once, run by one server or the other; once the queue
is idle, both shrink. Four logical GPU quarters per pipeline at most, on two logical GPUs.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from contextlib import ExitStack
from pathlib import Path

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.pipeline.driver import Pipeline
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.serve import ServerThread, make_scaler
from orchestrator.queue.states import JobState
from orchestrator.scaler.config import RoleBounds, ScalerConfig
from orchestrator.scaler.loop import Scaler, ScalerSnapshot
from tests.support.pipeline_fixtures import jobs_sharing_images, running_pipeline
from tests.support.queue_history import check_history
from tests.support.waiting import wait_for

QUEUE = "shared"
NUM_JOBS = 24
# Outstanding jobs per generator. A server holds at most 2 * 2 jobs per generator, so at two
# generators it runs 8 and sees at most half of the other 16 queued: 16 jobs, 2 generators.
# The whole burst, unshared, asks for ceil(24 / 8) = 3: the bound.
JOBS_PER_GENERATOR = 8
MAX_GENERATORS = 3


def test_two_servers_each_scale_for_their_share_of_one_queue(
    ray_cluster: None, model_dir: Path, redis_server: PrivateRedisServer,
) -> None:
    namespace = f"two-{uuid.uuid4().hex[:8]}"
    scaler_config = ScalerConfig(
        vision=RoleBounds(1, 1), generators=RoleBounds(1, MAX_GENERATORS),
        jobs_per_generator=JOBS_PER_GENERATOR, idle_s=3600, warm_s=3600, interval_s=0.1,
        # Ray keeps one resource request per cluster, the last call's: two servers' warm floors
        # would replace each other. Off here (no autoscaler reads it on a local cluster).
        request_resources=False,
    )
    assert math.ceil(NUM_JOBS / JOBS_PER_GENERATOR) == MAX_GENERATORS  # unshared: the bound
    # One allocator for both, as for two servers of one deployment: same images, same ranges.
    allocator = AllocatorConfig(redis_url=redis_server.url, namespace=f"alloc-{namespace}")
    with ExitStack() as stack:
        client = stack.enter_context(Client(redis_server.url, namespace=namespace))
        pipelines: list[Pipeline] = []
        scalers: list[Scaler] = []
        snapshots: list[list[ScalerSnapshot]] = []
        servers: list[ServerThread] = []
        for _ in range(2):
            # A quarter GPU per actor: both pipelines at their peak (1 + 2 each) fit on two.
            pipeline = stack.enter_context(running_pipeline(
                model_dir, redis_server.url, allocator=allocator, pool_num_vision_actors=1,
                pool_num_generator_actors=1, pool_gpus_per_vision_actor=0.25,
                pool_gpus_per_generator_actor=0.25, max_in_flight_per_generator=2,
            ))
            queue_config = QueueConfig(redis_server.url, QUEUE, namespace, idle_wait_s=0.2)
            scaler = make_scaler(scaler_config, queue_config, pipeline)
            seen: list[ScalerSnapshot] = []
            scaler.on_snapshot = seen.append
            stack.callback(scaler.backlog.close)
            server = ServerThread(queue_config, pipeline, scaler)
            server.start()
            stack.callback(server.stop)
            pipelines.append(pipeline)
            scalers.append(scaler)
            snapshots.append(seen)
            servers.append(server)
        assert pipelines[0].pool.generator_names != pipelines[1].pool.generator_names
        # Each scaler divides by the servers heard from: both must be, before the burst.
        wait_for(lambda: len(client.queue_status(QUEUE).servers) == 2, "both servers seen", 30)

        batch = client.new_batch()
        receipts = batch.submit_many([
            JobSpec(job.job_id, QUEUE, job.prompt, job.images, job.sampling)
            for job in jobs_sharing_images(NUM_JOBS, 16, "burst")
        ])
        # Both grow for their half (the new actors may still be loading when the burst ends;
        # idle_s holds them meanwhile).
        for pipeline in pipelines:
            wait_for_generators(pipeline, 2, 120)
        wait_for(lambda: batch.counts().done, "the burst done", 240)
        history = check_history(client, batch, receipts, QUEUE)
        assert history.count(JobState.SUCCEEDED) == NUM_JOBS
        # Each job ran once, on one server or the other, and both served.
        succeeded = [pipeline.progress.succeeded for pipeline in pipelines]
        assert sum(succeeded) == NUM_JOBS and min(succeeded) > 0, succeeded
        for seen in snapshots:
            desired = [snapshot.decision.generators.desired for snapshot in seen]
            # Sized for its share: two generators, never the bound the whole burst asks for.
            assert max(desired) == 2, desired
            assert max(snapshot.inputs.queued for snapshot in seen) <= NUM_JOBS // 2

        # Idle now (shortened only after the burst, as in test_scaling): both shrink.
        for scaler in scalers:
            scaler.config = dataclasses.replace(scaler_config, idle_s=1.0)
        for pipeline in pipelines:
            wait_for_generators(pipeline, 1, 60)
            assert pipeline.capacity == 4


def wait_for_generators(pipeline: Pipeline, count: int, timeout_s: float) -> None:
    """Until the pipeline has `count` open generators and none draining."""
    def settled() -> bool:
        counts = pipeline.actor_counts().generators
        return counts.open == count and counts.draining == 0

    wait_for(settled, f"{count} generators open, none draining", timeout_s)
