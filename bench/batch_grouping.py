"""Grouping a batch file's lines by image: where their requests run, and how fast.

A batch of `--images` images with `--lines-per-image` questions each (20 by default), written
the way such files often are: image by image for each question, so the lines sharing an image
are far apart. `vlmq submit` groups a window's lines by their first image before it enqueues
them (`orchestrator.batches.submitter.group_by_image`); this runs the same jobs through one
pipeline in file order and in grouped order and reports, for each, the share of requests the
router sent to the generator that already held their image (with exllamav2 that generator's
prefix cache holds the image's pages; the transformers engine used here has no prefix cache,
so on this machine the figure to read is the placement, and the time shows only scheduling
effects), vision calls, and wall time. Both orders run on one pipeline, on images of their own
(nothing cached across runs), grouped first then file order, then again in the other order;
the faster of each counts.
Usage: .venv/bin/python -m bench.batch_grouping [--images N] [--lines-per-image N]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.machine import describe_machine
from bench.workloads import (
    KEEP_IDLE_WORKERS_HELP,
    local_cluster,
    outcome_tokens,
    sample_images,
    started_pipeline,
    timed_run,
    tiny_model_dir,
)
from orchestrator.batches.image_grouping import group_by_image
from orchestrator.pipeline.actor_pool import PoolConfig
from orchestrator.pipeline.driver import Pipeline
from orchestrator.pipeline.job import IMAGE_PLACEHOLDER, JobRequest
from worker.sampling_params import SamplingParams

POOL = PoolConfig(num_vision_actors=1, num_generator_actors=2)


@dataclass(frozen=True, slots=True)
class OrderRun:
    order: str
    seconds: float
    affine: int  # requests routed to the generator that already held their image
    requests: int
    vision_calls: int
    completion_tokens: int


def file_order_jobs(
    num_images: int, lines_per_image: int, variant: int, max_new_tokens: int
) -> list[JobRequest]:
    """Question q of every image, then question q + 1 of every image, ..."""
    images = sample_images(num_images, first_seed=500 + variant * num_images)
    sampling = SamplingParams(max_new_tokens=max_new_tokens)
    return [
        JobRequest(
            f"g{variant}-img{image}-q{question}",
            f"[INST]{IMAGE_PLACEHOLDER}Question {question} about this image.[/INST]",
            (images[image],),
            sampling,
        )
        for question in range(lines_per_image)
        for image in range(num_images)
    ]


def run_order(pipeline: Pipeline, jobs: list[JobRequest], order: str) -> OrderRun:
    if order == "grouped":
        jobs = group_by_image(jobs, lambda job: job.job_id.split("-")[1])
    affine, calls = pipeline.router.num_affine, pipeline.progress.vision_calls
    seconds, outcomes = timed_run(pipeline, jobs)
    return OrderRun(
        order, seconds, pipeline.router.num_affine - affine, len(jobs),
        pipeline.progress.vision_calls - calls, outcome_tokens(outcomes),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--lines-per-image", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--keep-idle-workers", action="store_true", help=KEEP_IDLE_WORKERS_HELP)
    args = parser.parse_args()

    runs: dict[str, list[OrderRun]] = {"grouped": [], "file order": []}
    with (
        tiny_model_dir() as model_dir,
        local_cluster(model_dir, keep_idle_workers=args.keep_idle_workers) as cluster,
        started_pipeline(cluster.pipeline_config(POOL)) as pipeline,
    ):
        orders = ["grouped", "file order", "file order", "grouped"]
        for variant, order in enumerate(orders):
            jobs = file_order_jobs(args.images, args.lines_per_image, variant,
                                   args.max_new_tokens)
            runs[order].append(run_order(pipeline, jobs, order))

    print(f"machine: {describe_machine()}")
    print(
        f"batch: {args.images} images x {args.lines_per_image} lines each "
        f"({args.images * args.lines_per_image} requests), lines sharing an image "
        f"{args.images} apart in the file; greedy, max_new_tokens {args.max_new_tokens}; tiny "
        f"Pixtral, {POOL.num_vision_actors} vision and {POOL.num_generator_actors} generator "
        f"actors (transformers engine, no prefix cache) on a local Ray; best of 2 per order"
    )
    best = {order: min(found, key=lambda run: run.seconds) for order, found in runs.items()}
    for run in best.values():
        print(
            f"{run.order:>10}: {run.affine:4d}/{run.requests} requests on their image's "
            f"generator ({run.affine / run.requests:5.1%}), {run.vision_calls:3d} vision calls, "
            f"{run.seconds:6.2f} s, {run.requests / run.seconds:5.1f} requests/s "
            f"({run.completion_tokens} completion tokens)"
        )
    grouped, scattered = best["grouped"], best["file order"]
    print(f"ratio time file order / grouped: {scattered.seconds / grouped.seconds:.2f}x; "
          f"placement on the image's generator: grouped {grouped.affine / grouped.requests:.1%}"
          f" vs file order {scattered.affine / scattered.requests:.1%}")


if __name__ == "__main__":
    main()
