"""vlmq's side of the queue benchmark (`bench/queue_peers.py`): no-op jobs end to end.

One `bench.noop_server` process claims and completes; this process submits every job as one
batch (`submit_many`, pipelined) and reads the results as they finish (`Batch.results`).
The time runs from the first submit until the last result is read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from orchestrator.queue.client import Client
from orchestrator.queue.schema import JobSpec

REPO = Path(__file__).resolve().parent.parent


def measure(redis_url: str, num_jobs: int) -> float:
    """Seconds from the first submit to the last result, for `num_jobs` no-op jobs."""
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.noop_server", "--redis-url", redis_url,
         "--namespace", namespace],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "serving queue" not in line:
            raise RuntimeError(f"bench.noop_server did not start: {line!r}")
        client = Client(redis_url, namespace=namespace, result_ttl_s=600)
        batch = client.new_batch()
        specs = [JobSpec(f"job-{i}", "noop", "ping") for i in range(num_jobs)]
        started = time.perf_counter()
        batch.submit_many(specs)
        seen = sum(1 for _ in batch.results(block_s=0.5))
        seconds = time.perf_counter() - started
        if seen != num_jobs:
            raise RuntimeError(f"read {seen} results for {num_jobs} jobs")
        client.close()
        return seconds
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    import tempfile

    from orchestrator.private_redis import PrivateRedisServer

    with tempfile.TemporaryDirectory() as scratch:
        redis_server = PrivateRedisServer(Path(scratch), persist_every_write=False)
        redis_server.start()
        try:
            n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
            s = measure(redis_server.url, n)
            print(f"vlmq: {n} jobs in {s:.2f} s = {n / s:,.0f} jobs/s")
        finally:
            redis_server.stop()
