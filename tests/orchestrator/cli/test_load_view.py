"""`vlmq status` shows each server's actors and what they run: a real pipeline (the tiny model
on a local Ray with two logical GPUs) behind a real queue server, read back by the CLI from
Redis alone while its jobs run, and again once they are done."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from orchestrator.pipeline.actor_load import SlotState
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.serve import ServerThread
from tests.support.pipeline_fixtures import jobs_sharing_images, running_pipeline
from tests.support.vlmq_cli import run_vlmq
from tests.support.waiting import wait_for
from worker.sampling_params import SamplingParams

QUEUE = "loaded"


def test_status_shows_every_actor_with_its_state_gpus_and_requests_running(
    ray_cluster: None, model_dir: Path, redis_server: PrivateRedisServer,
) -> None:
    namespace = f"ld-{uuid.uuid4().hex[:8]}"
    config = QueueConfig(redis_server.url, QUEUE, namespace, idle_wait_s=0.2, reap_every_s=0.2)

    def status(*args: str) -> str:
        shown = run_vlmq("status", "--queue", QUEUE, "--namespace", namespace, "--redis-url",
                         redis_server.url, *args)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    def loads() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(status("--json"))["loads"]
        return found

    with running_pipeline(
        model_dir, redis_server.url, pool_num_vision_actors=1, pool_num_generator_actors=2,
        max_in_flight_per_generator=2,
    ) as pipeline, Client(redis_server.url, namespace=namespace) as client:
        pool = pipeline.pool
        names = [*pool.vision_names, *pool.generator_names]
        assert [(a.role, a.name, a.state, a.running, a.gpus) for a in pipeline.actor_loads()] == [
            ("vision", names[0], SlotState.OPEN, 0, 0.5),
            ("generator", names[1], SlotState.OPEN, 0, 0.5),
            ("generator", names[2], SlotState.OPEN, 0, 0.5),
        ]
        server = ServerThread(config, pipeline)
        server.start()
        try:
            batch = client.new_batch()
            # Long enough to be caught running (some end early, at the random model's EOS).
            batch.submit_many([
                JobSpec(job.job_id, QUEUE, job.prompt, job.images, SamplingParams(300))
                for job in jobs_sharing_images(4, prefix="ld")
            ])
            def generators_running() -> int:
                shown = loads()
                return sum(a["running"] for a in shown[0].get("actors", [])
                           if a["role"] == "generator") if shown else 0

            wait_for(lambda: generators_running() >= 2,
                     "the status showing generators running the jobs", 120)
            busy = loads()[0]
            assert busy["consumer"] == config.consumer and busy["capacity"] == pipeline.capacity
            assert 2 <= busy["held"] <= 4
            assert [(a["role"], a["name"], a["state"], a["gpus"]) for a in busy["actors"]] == [
                ("vision", names[0], "open", 0.5),
                ("generator", names[1], "open", 0.5),
                ("generator", names[2], "open", 0.5),
            ]
            assert all(0 <= a["running"] <= 2 for a in busy["actors"][1:])  # the router's cap
            text = status()
            assert re.search(rf"server {re.escape(config.consumer)}: [0-4] of "
                             rf"{pipeline.capacity} jobs held", text), text
            assert f"{names[1]}  open  GPU 0.5  running" in text

            wait_for(lambda: batch.counts().done, "every job done", 240)
            wait_for(lambda: loads()[0]["held"] == 0, "the load showing nothing held")
            assert all(a["running"] == 0 for a in loads()[0]["actors"])
        finally:
            server.stop()
        assert loads() == []  # a stopped server is no longer live, and its load is deleted
