"""What the pipeline costs: the same workload through it and through the engines called directly.

The workload: 40 requests over 4 distinct images (each request shows one or two), greedy, on
the tiny Pixtral. Directly: in this process, each distinct image decoded and embedded once
(TransformersVision) and each request submitted to one transformers engine as soon as its
images are embedded, so embedding overlaps decoding as it does in the pipeline. Through
the pipeline: one vision and one generator actor on a local Ray with logical GPUs, a private
redis-server for the allocator; images decoded and keyed in CPU tasks, features by reference.
Both use the same max_batch_size and one torch thread per engine, and both have run a warm-up
batch first; the timed part starts with the encoded images and ends with the last result.
The two take turns, each repeat on new images (nothing cached from the one before).
Usage: .venv/bin/python -m bench.pipeline_overhead [--requests N] [--images N] [--keep-idle-workers]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.machine import describe_machine
from bench.workloads import (
    KEEP_IDLE_WORKERS_HELP,
    TORCH_THREADS,
    TORCH_THREADS_HELP,
    Workload,
    embed_and_generate,
    local_cluster,
    num_completion_tokens,
    outcome_tokens,
    shared_image_workload,
    started_pipeline,
    timed_run,
    tiny_model_dir,
    warm_up_workload,
)
from orchestrator.pipeline.actor_pool import PoolConfig
from worker.engines.transformers.language import start_transformers_engine
from worker.engines.transformers.model import load_transformers_vlm
from worker.engines.transformers.vision import TransformersVision

POOL = PoolConfig(num_vision_actors=1, num_generator_actors=1)


@dataclass
class Best:
    """The fastest of the repeats, as the machine is shared."""

    seconds: float = float("inf")
    completion_tokens: int = 0

    def add(self, seconds: float, completion_tokens: int) -> None:
        if seconds < self.seconds:
            self.seconds, self.completion_tokens = seconds, completion_tokens


def compare(
    model_dir: Path, workloads: list[Workload], max_batch_size: int, keep_idle_workers: bool
) -> tuple[Best, Best]:
    """Both ways, taking turns on each workload, so load on the machine falls on both alike."""
    vlm = load_transformers_vlm(model_dir)
    vision = TransformersVision(vlm)
    engine = start_transformers_engine(vlm, max_batch_size=max_batch_size)
    direct, piped = Best(), Best()
    try:
        with local_cluster(model_dir, keep_idle_workers=keep_idle_workers) as cluster:
            config = cluster.pipeline_config(POOL, max_batch_size=max_batch_size)
            with started_pipeline(config) as pipeline:
                embed_and_generate(vision, engine, warm_up_workload())
                for workload in workloads:
                    seconds, results = embed_and_generate(vision, engine, workload)
                    direct.add(seconds, num_completion_tokens(results))
                    seconds, outcomes = timed_run(pipeline, workload.jobs())
                    piped.add(seconds, outcome_tokens(outcomes))
    finally:
        engine.close()
    return direct, piped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--images", type=int, default=4, help="distinct images shared")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--keep-idle-workers", action="store_true", help=KEEP_IDLE_WORKERS_HELP)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="workloads run; the best counts")
    parser.add_argument("--torch-threads", type=int, default=TORCH_THREADS, help=TORCH_THREADS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    workloads = [
        shared_image_workload(args.requests, args.images, args.max_new_tokens, variant=variant)
        for variant in range(args.repeats)
    ]
    with tiny_model_dir() as model_dir:
        direct, piped = compare(
            model_dir, workloads, args.max_batch_size, args.keep_idle_workers
        )

    print(f"machine: {describe_machine()}, torch threads {torch.get_num_threads()} in process")
    print(
        f"requests: {args.requests} over {args.images} distinct images "
        f"({workloads[0].num_image_uses} image uses), greedy, max_new_tokens "
        f"{args.max_new_tokens}, max_batch_size {args.max_batch_size}; tiny Pixtral, "
        f"transformers engine; best of {args.repeats} (new images each time); Ray idle "
        f"workers {'kept' if args.keep_idle_workers else 'ended after 1 s (default)'}"
    )
    for label, run in (
        ("engines called directly, one process:", direct),
        ("pipeline, 1 vision + 1 generator actor:", piped),
    ):
        print(
            f"{label:41} {run.seconds:6.2f} s, {args.requests / run.seconds:6.1f} requests/s "
            f"({run.completion_tokens} completion tokens)"
        )
    print(f"ratio pipeline time / direct time (overhead): {piped.seconds / direct.seconds:.2f}x")


if __name__ == "__main__":
    main()
