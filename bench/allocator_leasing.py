"""Allocations per second for new images: one actor round trip each, against leased blocks.

Both runs use the same named allocator actor, a private redis-server and a local Ray started
here. Usage: .venv/bin/python -m bench.allocator_leasing [--images N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import ray

from bench.machine import describe_machine
from orchestrator.allocator.config import AllocatorConfig
from orchestrator.allocator.handle import get_or_start_allocator
from orchestrator.allocator.range_client import ActorRangeClient, LeasedRangeClient, RangeClient
from orchestrator.private_redis import PrivateRedisServer

ROWS_PER_IMAGE = 256  # a typical image after a 2x2 patch merge


def allocations_per_second(client: RangeClient, num_images: int) -> float:
    prefix = uuid.uuid4().hex
    started = time.perf_counter()
    for i in range(num_images):
        client.allocate_many([(f"{prefix}-{i}", ROWS_PER_IMAGE)])
    return num_images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3000, help="new images per run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        server = PrivateRedisServer(Path(directory))
        server.start()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            namespace = f"bench-{uuid.uuid4().hex[:6]}"
            config = AllocatorConfig(redis_url=server.url, namespace=namespace)
            allocator = get_or_start_allocator(config)
            ray.get(allocator.stats.remote())  # started before the clock runs
            direct = allocations_per_second(ActorRangeClient(allocator), args.images)
            leased_client = LeasedRangeClient(allocator, config)
            leased = allocations_per_second(leased_client, args.images)
            ray.kill(allocator, no_restart=True)
        finally:
            ray.shutdown()
            server.stop()

    print(f"machine: {describe_machine()}")
    print(f"new images per run: {args.images}, {ROWS_PER_IMAGE} IDs each")
    print(f"without leasing (one actor call each): {direct:12,.0f} allocations/s")
    print(
        f"with leasing ({leased_client.num_round_trips} actor calls): "
        f"{leased:12,.0f} allocations/s"
    )
    print(f"ratio leased / direct: {leased / direct:.1f}x")


if __name__ == "__main__":
    main()
