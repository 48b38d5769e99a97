"""Image dedup in the pipeline: vision calls and wall time with it on and off.

100 requests share 10 distinct images (each request shows one or two of them). Each setting
gets a fresh Pipeline (fresh actors, actor names and allocator namespace) on one local Ray with
logical GPUs, the tiny Pixtral and a private redis-server; actor start-up and a warm-up batch
are left out of the timed part, which is `Pipeline.run` over the whole batch. Each pipeline runs
--repeats batches, each on images of its own (nothing cached from the one before); the fastest
counts.
Usage: .venv/bin/python -m bench.dedup [--requests N] [--images N] [--keep-idle-workers]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.machine import describe_machine
from bench.workloads import (
    KEEP_IDLE_WORKERS_HELP,
    LocalCluster,
    Workload,
    local_cluster,
    outcome_tokens,
    shared_image_workload,
    started_pipeline,
    timed_run,
    tiny_model_dir,
)
from orchestrator.pipeline.actor_pool import PoolConfig

POOL = PoolConfig(num_vision_actors=1, num_generator_actors=2)


@dataclass(frozen=True, slots=True)
class DedupRun:
    dedup_images: bool
    seconds: float
    vision_calls: int
    feature_reuses: int
    completion_tokens: int


def best_run(cluster: LocalCluster, workloads: list[Workload], dedup_images: bool) -> DedupRun:
    """The fastest workload through one fresh pipeline; each has images of its own."""
    config = cluster.pipeline_config(POOL, dedup_images=dedup_images)
    runs = []
    with started_pipeline(config) as pipeline:
        for workload in workloads:
            calls, reuses = pipeline.progress.vision_calls, pipeline.progress.feature_reuses
            seconds, outcomes = timed_run(pipeline, workload.jobs())
            runs.append(DedupRun(
                dedup_images,
                seconds,
                pipeline.progress.vision_calls - calls,
                pipeline.progress.feature_reuses - reuses,
                outcome_tokens(outcomes),
            ))
    return min(runs, key=lambda run: run.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--images", type=int, default=10, help="distinct images shared")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="workloads run; the best counts")
    parser.add_argument("--keep-idle-workers", action="store_true", help=KEEP_IDLE_WORKERS_HELP)
    args = parser.parse_args()

    workloads = [
        shared_image_workload(args.requests, args.images, args.max_new_tokens, variant=variant)
        for variant in range(args.repeats)
    ]
    with (
        tiny_model_dir() as model_dir,
        local_cluster(model_dir, keep_idle_workers=args.keep_idle_workers) as cluster,
    ):
        on = best_run(cluster, workloads, dedup_images=True)
        off = best_run(cluster, workloads, dedup_images=False)

    print(f"machine: {describe_machine()}")
    print(
        f"requests: {args.requests} sharing {args.images} distinct images "
        f"({workloads[0].num_image_uses} image uses), greedy, max_new_tokens "
        f"{args.max_new_tokens}; tiny Pixtral, {POOL.num_vision_actors} vision and "
        f"{POOL.num_generator_actors} generator actors (transformers engine) on a local Ray; "
        f"Ray idle workers "
        f"{'kept' if args.keep_idle_workers else 'ended after 1 s (default)'}; best of "
        f"{args.repeats} (new images each time)"
    )
    for run in (on, off):
        label = "dedup on: " if run.dedup_images else "dedup off:"
        print(
            f"{label} {run.vision_calls:4d} vision calls, {run.feature_reuses:4d} reuses, "
            f"{run.seconds:6.2f} s, {args.requests / run.seconds:6.1f} requests/s "
            f"({run.completion_tokens} completion tokens)"
        )
    print(f"ratio time off / on: {off.seconds / on.seconds:.2f}x")


if __name__ == "__main__":
    main()
