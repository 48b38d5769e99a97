"""Completion tokens per second of one generator: concurrency 8 against concurrency 1.

One transformers engine on the tiny Pixtral, in this process (no Ray). The same requests, each
with an image (features computed before the clock runs), greedy, are all submitted at once to
an engine with max_batch_size 8 and to one with max_batch_size 1; the first decodes up to eight
at a time, the second one after another. Best of --repeats for each.
Usage: .venv/bin/python -m bench.dynamic_batching [--requests N] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from bench.machine import describe_machine
from bench.workloads import (
    TORCH_THREADS,
    TORCH_THREADS_HELP,
    generate_all,
    generation_requests,
    num_completion_tokens,
    shared_image_workload,
    tiny_model_dir,
    warm_up_workload,
)
from worker.engines.transformers.language import start_transformers_engine
from worker.engines.transformers.model import TransformersVlm, load_transformers_vlm
from worker.engines.transformers.vision import TransformersVision
from worker.generation import GenerationRequest

NUM_IMAGES = 4


@dataclass
class EngineRun:
    """One engine's figures: the best run counts, as the machine is shared."""

    max_batch_size: int
    best_tokens_per_s: float = 0.0
    num_tokens: int = 0  # completion tokens of one run
    mean_decode_batch: float = 0.0  # sequences a decode step advanced, on average


def interleaved_runs(
    vlm: TransformersVlm,
    batch_sizes: list[int],
    requests: list[GenerationRequest],
    warm_up: list[GenerationRequest],
    repeats: int,
) -> list[EngineRun]:
    """Each engine runs the requests `repeats` times, taking turns, so load on the machine
    falls on both alike."""
    engines = [start_transformers_engine(vlm, max_batch_size=size) for size in batch_sizes]
    runs = [EngineRun(size) for size in batch_sizes]
    try:
        for engine in engines:
            generate_all(engine, warm_up)
        for _ in range(repeats):
            for engine, run in zip(engines, runs, strict=True):
                steps = engine.num_steps
                seconds, results = generate_all(engine, requests)
                run.num_tokens = num_completion_tokens(results)
                run.best_tokens_per_s = max(run.best_tokens_per_s, run.num_tokens / seconds)
                # Each request's first token comes from its prefill, the rest from decode steps.
                decoded = run.num_tokens - len(requests)
                run.mean_decode_batch = decoded / max(engine.num_steps - steps, 1)
        return runs
    finally:
        for engine in engines:
            engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--concurrency", type=int, default=8, help="max_batch_size of the batched run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine; the best counts")
    parser.add_argument("--torch-threads", type=int, default=TORCH_THREADS, help=TORCH_THREADS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    workload = shared_image_workload(
        args.requests, NUM_IMAGES, args.max_new_tokens, max_images_per_request=1
    )
    warm = warm_up_workload()
    with tiny_model_dir() as model_dir:
        vlm = load_transformers_vlm(model_dir)
    vision = TransformersVision(vlm)
    requests = generation_requests(vision, workload)
    warm_up = generation_requests(vision, warm)
    single, batched = interleaved_runs(
        vlm, [1, args.concurrency], requests, warm_up, args.repeats
    )

    print(f"machine: {describe_machine()}, torch threads {torch.get_num_threads()}")
    print(
        f"requests: {args.requests}, one image each ({NUM_IMAGES} distinct), greedy, "
        f"max_new_tokens {args.max_new_tokens}; tiny Pixtral, transformers engine; "
        f"best of {args.repeats}"
    )
    for run in (single, batched):
        print(
            f"concurrency {run.max_batch_size} (max_batch_size {run.max_batch_size}): "
            f"{run.best_tokens_per_s:8,.0f} completion tokens/s ({run.num_tokens} tokens a run, "
            f"{run.mean_decode_batch:.1f} sequences per decode step)"
        )
    ratio = batched.best_tokens_per_s / single.best_tokens_per_s
    print(f"ratio concurrency {args.concurrency} / concurrency 1: {ratio:.2f}x")


if __name__ == "__main__":
    main()
