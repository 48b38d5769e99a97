"""The `vlmq` command."""

from __future__ import annotations

import argparse
import os
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
    serve = commands.add_parser(
        "serve",
        help="serve one queue with one model: claim jobs from Redis, run them on Ray",
        description="Serve one queue with one model until SIGTERM or SIGINT, then drain.",
    )
    serve.add_argument("--model", required=True, type=Path, metavar="DIR",
                       help="the model's directory (Hugging Face layout)")
    serve.add_argument("--redis-url", default=os.environ.get("VLMQ_REDIS_URL"),
                       help="the queue's Redis (default: $VLMQ_REDIS_URL)")
    serve.add_argument("--queue", default="default", help="queue name (default: default)")
    serve.add_argument("--namespace", default="vlmq",
                       help="deployment namespace: the hash tag of every key (default: vlmq)")
    serve.add_argument("--engine", choices=("transformers", "exllamav2"),
                       default="transformers", help="transformers (CPU or GPU) or exllamav2 (GPU)")
    serve.add_argument("--ray-address", default=None,
                       help="join this Ray cluster (default: start a local one)")
    serve.add_argument("--num-gpus", type=int, default=None,
                       help="GPUs of the local Ray (logical ones where there are none)")
    serve.add_argument("--vision-actors", type=int, default=1)
    serve.add_argument("--generator-actors", type=int, default=1)
    serve.add_argument("--gpus-per-actor", type=float, default=0.5,
                       help="GPU share of each vision and generator actor (default: 0.5)")
    serve.add_argument("--max-batch-size", type=int, default=8,
                       help="requests one generator decodes at once (default: 8)")
    serve.add_argument("--lease-s", type=float, default=30.0,
                       help="how long a claim holds a job without a renewal (default: 30)")
    serve.add_argument("--drain-grace-s", type=float, default=30.0,
                       help="on SIGTERM, how long in-flight jobs may finish (default: 30)")
    serve.add_argument("--max-backlog", type=int, default=100_000,
                       help="unfinished jobs the queue accepts (default: 100000)")
    status = commands.add_parser(
        "status", help="a queue's backlog, servers and counters; or one job's or batch's state"
    )
    status.add_argument("--redis-url", default=os.environ.get("VLMQ_REDIS_URL"),
                        help="the queue's Redis (default: $VLMQ_REDIS_URL)")
    status.add_argument("--queue", default="default", help="queue name (default: default)")
    status.add_argument("--namespace", default="vlmq", help="deployment namespace (default: vlmq)")
    which = status.add_mutually_exclusive_group()
    which.add_argument("--job", default=None, help="one job's state, deliveries and history")
    which.add_argument("--batch", default=None, help="one batch's counts per state")
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
    if args.command == "serve":
        if not args.redis_url:
            serve.error("give --redis-url or set VLMQ_REDIS_URL")
        return _serve(args)
    if args.command == "status":
        if not args.redis_url:
            status.error("give --redis-url or set VLMQ_REDIS_URL")
        return _status(args)
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


def _serve(args: argparse.Namespace) -> int:
    # Imported here: ray and torch are slow to import, and the other commands do not need them.
    import ray

    from orchestrator.allocator.config import AllocatorConfig
    from orchestrator.pipeline.actor_pool import PoolConfig
    from orchestrator.pipeline.config import PipelineConfig
    from orchestrator.queue.config import QueueConfig
    from orchestrator.queue.serve import serve
    from worker.engines import EngineConfig, EngineKind

    queue_config = QueueConfig(
        redis_url=args.redis_url,
        queue=args.queue,
        namespace=args.namespace,
        lease_s=args.lease_s,
        renew_every_s=args.lease_s / 3,
        drain_grace_s=args.drain_grace_s,
        max_backlog=args.max_backlog,
    )
    pipeline_config = PipelineConfig(
        engine=EngineConfig(str(args.model), EngineKind(args.engine), args.max_batch_size),
        allocator=AllocatorConfig(args.redis_url, namespace=args.namespace),
        pool=PoolConfig(
            num_vision_actors=args.vision_actors,
            num_generator_actors=args.generator_actors,
            gpus_per_vision_actor=args.gpus_per_actor,
            gpus_per_generator_actor=args.gpus_per_actor,
            name_prefix=f"{args.namespace}-{args.queue}",
        ),
    )
    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False)
    else:
        ray.init(num_gpus=args.num_gpus, include_dashboard=False, log_to_driver=False)
    try:
        return serve(queue_config, pipeline_config)
    finally:
        ray.shutdown()


def _status(args: argparse.Namespace) -> int:
    from orchestrator.queue.client import Client
    from orchestrator.queue.errors import NoSuchJobError

    with Client(args.redis_url, namespace=args.namespace, load_library=False) as client:
        if args.job is not None:
            try:
                job = client.status(args.job)
            except NoSuchJobError as error:
                print(error, file=sys.stderr)
                return 1
            print(f"job {job.job_id}: {job.state.value} on queue {job.queue}, "
                  f"{job.deliveries} deliveries")
            for line in job.history:
                print(f"  {line}")
            return 0
        if args.batch is not None:
            counts = client.batch(args.batch).counts()
            print(f"batch {args.batch}: {counts.total} jobs, {counts.open} unfinished; "
                  f"{counts.queued} queued, {counts.running} running, {counts.succeeded} "
                  f"succeeded, {counts.failed} failed, {counts.cancelled} cancelled, "
                  f"{counts.dead} dead")
            return 0
        queue = client.queue_status(args.queue)
        lanes = ", ".join(f"{name} {n}" for name, n in zip(("high", "normal", "low"),
                                                            queue.queued_per_lane, strict=True))
        print(f"queue {queue.queue}: {queue.unfinished} unfinished ({lanes} queued; "
              f"{queue.running} running, {queue.retrying} waiting to retry)")
        if queue.servers:
            print(f"served by {len(queue.servers)}: {', '.join(queue.servers)}")
        else:
            print("served by nobody: its jobs wait until a `vlmq serve --queue "
                  f"{queue.queue}` starts")
        print("counters: " + ", ".join(f"{k} {v}" for k, v in sorted(queue.counters.items())))
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
