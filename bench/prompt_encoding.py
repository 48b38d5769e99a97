"""Prompts encoded per second: one `encode_many` call for a batch against one call per prompt.

Each prompt holds two images with aliases of their own (as the orchestrator writes them) and a
shared image under "<image>". Usage: .venv/bin/python -m bench.prompt_encoding [--prompts N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.machine import describe_machine
from worker.encoding.prompt_encoder import PromptEncoder
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.span import Span
from worker.tiny.tokenizer import write_tiny_tokenizer
from worker.token_range import RESERVED_ID_BASE, TokenRange

ROWS_PER_IMAGE = 256


def sample_batch(num_prompts: int) -> list[tuple[str, list[Span]]]:
    shared = Span("<image>", TokenRange(1, RESERVED_ID_BASE, ROWS_PER_IMAGE))
    batch = []
    for i in range(num_prompts):
        first = RESERVED_ID_BASE + ROWS_PER_IMAGE * (2 * i + 1)
        own = [
            Span(f"<$EMB_{first}$>", TokenRange(1, first, ROWS_PER_IMAGE)),
            Span(f"<$EMB_{first + 256}$>", TokenRange(1, first + ROWS_PER_IMAGE, ROWS_PER_IMAGE)),
        ]
        prompt = (
            f"[INST]Question {i}: compare {own[0].alias} with {own[1].alias}; "
            f"then say how both differ from <image>. Answer in one sentence, café-style ☕.[/INST]"
        )
        batch.append((prompt, [*own, shared]))
    return batch


def prompts_per_second(run: Callable[[], object], num_prompts: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return num_prompts / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        write_tiny_tokenizer(Path(directory), "pixtral")
        encoder = PromptEncoder(HFTextTokenizer.from_model_dir(directory))
    batch = sample_batch(args.prompts)
    batched = prompts_per_second(lambda: encoder.encode_many(batch), args.prompts)
    singly = prompts_per_second(
        lambda: [encoder.encode(prompt, spans) for prompt, spans in batch], args.prompts
    )
    print(f"machine: {describe_machine()}")
    print(f"prompts: {args.prompts}, 3 images each ({ROWS_PER_IMAGE} rows), best of 3")
    print(f"one encode() per prompt:  {singly:10,.0f} prompts/s")
    print(f"one encode_many() call:   {batched:10,.0f} prompts/s")
    print(f"ratio batched / single: {batched / singly:.2f}x")


if __name__ == "__main__":
    main()
