"""A `vlmq serve` process whose runner is the ScriptedRunner: for kill -9, SIGSTOP and drain
tests of the protocol that need a process to kill but not a model.

    python -m tests.support.scripted_serve --redis-url URL [--queue Q] [--namespace NS]
        [--lease-s S] [--renew-every-s S] [--drain-grace-s S] [--capacity N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from orchestrator.queue.config import QueueConfig
from orchestrator.queue.serve import serve_until_signalled
from orchestrator.queue.server import QueueServer
from tests.support.queue_runners import ScriptedRunner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--queue", default="default")
    parser.add_argument("--namespace", default="vlmq")
    parser.add_argument("--lease-s", type=float, default=30.0)
    parser.add_argument("--renew-every-s", type=float, default=None)
    parser.add_argument("--reap-every-s", type=float, default=0.2)
    parser.add_argument("--drain-grace-s", type=float, default=30.0)
    parser.add_argument("--capacity", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = QueueConfig(
        redis_url=args.redis_url,
        queue=args.queue,
        namespace=args.namespace,
        lease_s=args.lease_s,
        renew_every_s=args.renew_every_s or args.lease_s / 3,
        reap_every_s=args.reap_every_s,
        drain_grace_s=args.drain_grace_s,
        retry_base_s=0.05,
        retry_cap_s=0.2,
    )
    server = QueueServer(config, ScriptedRunner(args.capacity))
    asyncio.run(serve_until_signalled(server, "a scripted runner"))
    print(f"counters {server.counters.as_dict()}", flush=True)


if __name__ == "__main__":
    main()
