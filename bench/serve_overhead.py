"""What the Redis queue costs a batch: the demo's workload through `serve` against the same
jobs through the Pipeline in-process.

The workload is the demo's 22 good jobs (`orchestrator/demo.py`: 4 sample images shared
between them, 16 new tokens each), repeated --copies times under new job IDs. Both ways use
one started Pipeline (1 vision and 2 generator actors on a local Ray with logical GPUs, the
tiny Pixtral, a private redis-server): in-process, `Pipeline.run(jobs)`; through the queue, a
QueueServer on that pipeline (as `vlmq serve` runs it, on its own thread) and a Client in this
process submitting the batch over Redis and reading every result. The two take turns; the
fastest of --repeats counts for each, and the ratio is in-process time / queue time (1.0:
the queue costs nothing; the goal is >= 0.9).
Usage: .venv/bin/python -m bench.serve_overhead [--copies N] [--repeats N]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import uuid

from bench.machine import describe_machine
from bench.workloads import local_cluster, run_all, started_pipeline, tiny_model_dir
from orchestrator.demo import DEMO_QUEUE, NUM_GOOD_JOBS, sample_batch
from orchestrator.pipeline.actor_pool import PoolConfig
from orchestrator.pipeline.driver import Pipeline
from orchestrator.pipeline.job import JobRequest
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.serve import ServerThread
from orchestrator.queue.states import JobState

POOL = PoolConfig(num_vision_actors=1, num_generator_actors=2)


def workload(copies: int, tag: str) -> list[JobRequest]:
    good = sample_batch()[:NUM_GOOD_JOBS]
    return [
        dataclasses.replace(job, job_id=f"{tag}-{copy}-{job.job_id}")
        for copy in range(copies)
        for job in good
    ]


def in_process(pipeline: Pipeline, jobs: list[JobRequest]) -> float:
    started = time.perf_counter()
    run_all(pipeline, jobs)
    return time.perf_counter() - started


def through_queue(client: Client, jobs: list[JobRequest]) -> float:
    batch = client.new_batch()
    started = time.perf_counter()
    batch.submit_many(
        JobSpec(job.job_id, DEMO_QUEUE, job.prompt, job.images, job.sampling) for job in jobs
    )
    states = [result.state for result in batch.results(block_s=0.2)]
    seconds = time.perf_counter() - started
    if states.count(JobState.SUCCEEDED) != len(jobs):
        raise RuntimeError(f"through the queue: {states.count(JobState.SUCCEEDED)} of "
                           f"{len(jobs)} succeeded")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=3, help="the 22 jobs, this many times")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    best = {"in-process": float("inf"), "queue": float("inf")}
    with tiny_model_dir() as model_dir, local_cluster(model_dir) as cluster:
        config = cluster.pipeline_config(POOL)
        with started_pipeline(config) as pipeline:
            namespace = f"bench-{uuid.uuid4().hex[:6]}"
            server = ServerThread(QueueConfig(cluster.redis_url, DEMO_QUEUE, namespace), pipeline)
            server.start()
            client = Client(cluster.redis_url, namespace=namespace)
            try:
                through_queue(client, workload(1, "warm"))  # the queue's first round trips
                for repeat in range(args.repeats):
                    jobs = workload(args.copies, f"r{repeat}")
                    queued = [dataclasses.replace(j, job_id=f"q-{j.job_id}") for j in jobs]
                    best["in-process"] = min(best["in-process"], in_process(pipeline, jobs))
                    best["queue"] = min(best["queue"], through_queue(client, queued))
            finally:
                client.close()
                server.stop()
    n = args.copies * NUM_GOOD_JOBS
    print(f"machine: {describe_machine()}")
    print(f"{n} jobs (the demo's {NUM_GOOD_JOBS}, x{args.copies}), best of {args.repeats}")
    for name, seconds in best.items():
        print(f"  {name:10s} {seconds:6.2f} s = {n / seconds:5.1f} jobs/s")
    ratio = best["in-process"] / best["queue"]
    print(f"queue / in-process throughput: {ratio:.2f} (goal >= 0.9: "
          f"{'met' if ratio >= 0.9 else 'not met'})")


if __name__ == "__main__":
    main()
