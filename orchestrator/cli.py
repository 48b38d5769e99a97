"""The `vlmq` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the bundled sample batch on a local cluster")
    demo.add_argument(
        "--redis-url", default=None, help="use this Redis instead of starting a private one"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from orchestrator.demo import run_demo

        return run_demo(args.redis_url)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
