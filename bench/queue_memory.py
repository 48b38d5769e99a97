"""Redis memory over a long run: 100,000 no-op jobs through submit, claim and finish.

One private redis-server (no persistence), one `bench.noop_server` process. Before: the queue
set up (library loaded, streams made) with no job. The jobs go in as batches of 10,000, each
read back to the end, with a result TTL of 5 s; after the last, the run waits until the
expired job and batch keys are gone and reads memory again. Printed: used_memory and the key
count before, at the peak (the largest seen after a batch) and after, and the ratio after /
before.
Usage: .venv/bin/python -m bench.queue_memory [--jobs N] [--batch N]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import describe_machine
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.schema import JobSpec, Priority

REPO = Path(__file__).resolve().parent.parent
QUEUE = "noop"
NAMESPACE = "bench"


def memory(client: Client) -> tuple[int, int]:
    info = client.redis.info("memory")
    return int(info["used_memory"]), int(client.redis.dbsize())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        redis_server = PrivateRedisServer(Path(scratch), persist_every_write=False)
        redis_server.start()
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.noop_server", "--redis-url", redis_server.url,
             "--namespace", NAMESPACE, "--queue", QUEUE],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            client = Client(redis_server.url, namespace=NAMESPACE, result_ttl_s=5)
            # Make the lanes exist, as they do after the first job, so "before" is the
            # queue at rest rather than an empty Redis.
            warm = client.new_batch("warm")
            warm.submit_many(
                JobSpec(f"warm-{p}", QUEUE, "ping", priority=Priority(p)) for p in range(3)
            )
            list(warm.results(block_s=0.2))
            wait_for_keys(client, 7)  # the queue hash, 3 lanes, wake, servers, queue set
            before = memory(client)
            peak = before
            started = time.perf_counter()
            for first in range(0, args.jobs, args.batch):
                batch = client.new_batch(f"b{first}")
                batch.submit_many(
                    JobSpec(f"j{i}", QUEUE, "ping", priority=Priority(i % 3))
                    for i in range(first, min(args.jobs, first + args.batch))
                )
                done = sum(1 for _ in batch.results(block_s=0.2))
                assert done == min(args.batch, args.jobs - first)
                peak = max(peak, memory(client), key=lambda m: m[0])
            run_s = time.perf_counter() - started
            wait_for_keys(client, before[1])
            after = memory(client)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            redis_server.stop()
    print(f"machine: {describe_machine()}")
    print(f"{args.jobs:,} no-op jobs in {run_s:.1f} s, result TTL 5 s")
    for name, (used, keys) in (("before", before), ("peak", peak), ("after", after)):
        print(f"  {name:7s} used_memory {used / 1e6:8.2f} MB, {keys:,} keys")
    print(f"after / before: {after[0] / before[0]:.2f}")


def wait_for_keys(client: Client, at_most: int) -> None:
    deadline = time.monotonic() + 120
    while client.redis.dbsize() > at_most and time.monotonic() < deadline:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
