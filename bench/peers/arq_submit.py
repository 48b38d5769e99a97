"""The arq side of bench/queue_peers.py: submits N no-op jobs, waits for every result, and prints
one JSON line {"system": "arq", "jobs": N, "seconds": s}, timed from the first submit until the
last result was read.

Enqueues go out in concurrent batches (arq checks each job id under WATCH, so each enqueue is a
transaction of its own on a connection of its own; asyncio.gather is as pipelined as arq gets).
Results are then read job by job with `Job.result`, polling every 10 ms: by the time the loop
reaches a job it has usually finished, so most reads are one round trip. Runs in arq's own venv.
Usage: .bench-venvs/arq/bin/python bench/peers/arq_submit.py REDIS_URL NUM_JOBS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

# Only the peer's venv has arq; the main venv type-checks this file without it.
from arq.connections import RedisSettings, create_pool  # type: ignore[import-not-found, unused-ignore]

ENQUEUE_BATCH = 500
RESULT_POLL_S = 0.01


async def run_jobs(redis_url: str, num_jobs: int) -> float:
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        start = time.perf_counter()
        jobs: list[Any] = []
        for first in range(0, num_jobs, ENQUEUE_BATCH):
            count = min(ENQUEUE_BATCH, num_jobs - first)
            jobs += await asyncio.gather(*(redis.enqueue_job("noop") for _ in range(count)))
        results = [await job.result(poll_delay=RESULT_POLL_S) for job in jobs]
        seconds = time.perf_counter() - start
    finally:
        await redis.aclose()
    if results != [1] * num_jobs:
        wrong = sum(result != 1 for result in results)
        raise RuntimeError(f"arq: {wrong} of {num_jobs} results were not the no-op's 1")
    return seconds


def main() -> None:
    num_jobs = int(sys.argv[2])
    seconds = asyncio.run(run_jobs(sys.argv[1], num_jobs))
    print(json.dumps({"system": "arq", "jobs": num_jobs, "seconds": seconds}))


if __name__ == "__main__":
    main()
