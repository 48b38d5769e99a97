"""The `vlmq` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast, get_args

from worker.tiny.tokenizer import TinyTokenizerFamily


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the bundled sample batch on a local cluster")
    demo.add_argument(
        "--redis-url", default=None, help="use this Redis instead of starting a private one"
    )
    tiny = commands.add_parser(
        "make-tiny-model",
        help="write a tiny random-weight VLM of a real architecture in Hugging Face format",
    )
    tiny.add_argument(
        "--family",
        required=True,
        choices=get_args(TinyTokenizerFamily),
        help="Pixtral in Llava (as pixtral-12b) or Qwen2-VL (as Qwen2-VL-2B-Instruct)",
    )
    tiny.add_argument("--seed", type=_seed, default=0, help="weights are drawn from it (default 0)")
    tiny.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty directory; a tiny model already there is replaced",
    )
    tiny.add_argument("directory", type=Path, metavar="DIR", help="created if missing")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from orchestrator.demo import run_demo

        return run_demo(args.redis_url)
    if args.command == "make-tiny-model":
        family = cast(TinyTokenizerFamily, args.family)  # one of `choices`
        return _make_tiny_model(tiny, args.directory, family, args.seed, args.force)
    parser.error(f"unknown command {args.command}")
    return 2


def _make_tiny_model(
    parser: argparse.ArgumentParser,
    directory: Path,
    family: TinyTokenizerFamily,
    seed: int,
    force: bool,
) -> int:
    if directory.exists() and not directory.is_dir():
        parser.error(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        parser.error(f"{directory} is not empty; pass --force to write into it anyway")

    # Imported here: torch is slow to import, and the other commands do not need it.
    from worker.engines.model_fingerprint import model_fingerprint
    from worker.tiny.model import tiny_model_file_names, write_tiny_model

    write_tiny_model(directory, family, seed)
    print(f"wrote a tiny {family} model (seed {seed}) to {directory}:")
    for name in tiny_model_file_names(family):
        print(f"  {name:<26} {(directory / name).stat().st_size:>10,} bytes")
    print(f"fingerprint {model_fingerprint(directory)}")
    return 0


def _seed(text: str) -> int:
    # Checked here as well as in write_tiny_model, so a bad seed is a usage error (exit 2).
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer, got {text!r}") from None
    if not 0 <= seed < 2**63:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**63), got {seed}")
    return seed


if __name__ == "__main__":
    sys.exit(main())
