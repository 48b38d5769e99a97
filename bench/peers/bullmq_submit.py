"""The BullMQ side of bench/queue_peers.py: submits N no-op jobs, waits until all have completed,
and prints one JSON line {"system": "bullmq", "jobs": N, "seconds": s}, timed from the first
submit until the completed count reached N.

Jobs go in with `Queue.addBulk` (one MULTI pipeline per batch). Completion is seen by polling
the queue's job counts (one Lua call: ZCARD of the completed and failed sets) every 5 ms. That
was faster here than following QueueEvents' "completed" entries (6.6-8.9 s against 9.6-10.8 s
for 5,000 jobs, runs interleaved), and it cannot miss a job: BullMQ trims its event stream to
about 10,000 entries, fewer than a run writes. The returned values are checked afterwards,
outside the timed part.
Runs in BullMQ's own venv.
Usage: .bench-venvs/bullmq/bin/python bench/peers/bullmq_submit.py REDIS_URL NUM_JOBS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

# Only the peer's venv has bullmq; the main venv type-checks this file without it.
from bullmq import Queue  # type: ignore[import-not-found, import-untyped, unused-ignore]

QUEUE_NAME = "vlmq-bench"  # bullmq_worker.py serves the same queue
ADD_BATCH = 1000
COUNT_POLL_S = 0.005


async def wait_all_finished(queue: Any, num_jobs: int) -> None:
    while True:
        counts = await queue.getJobCounts("completed", "failed")
        if counts["failed"]:
            raise RuntimeError(f"bullmq: {counts['failed']} of {num_jobs} no-op jobs failed")
        if counts["completed"] >= num_jobs:
            return
        await asyncio.sleep(COUNT_POLL_S)


async def check_results(queue: Any, num_jobs: int) -> None:
    jobs = await queue.getJobs(["completed"])
    wrong = sum(job.returnvalue != 1 for job in jobs)
    if len(jobs) != num_jobs or wrong:
        raise RuntimeError(
            f"bullmq: {len(jobs)} completed jobs ({wrong} without the no-op's 1), "
            f"expected {num_jobs}"
        )


async def run_jobs(redis_url: str, num_jobs: int) -> float:
    queue = Queue(QUEUE_NAME, {"connection": redis_url})
    try:
        start = time.perf_counter()
        for first in range(0, num_jobs, ADD_BATCH):
            count = min(ADD_BATCH, num_jobs - first)
            await queue.addBulk([{"name": "noop", "data": {}} for _ in range(count)])
        await wait_all_finished(queue, num_jobs)
        seconds = time.perf_counter() - start
        await check_results(queue, num_jobs)
    finally:
        await queue.close()
    return seconds


def main() -> None:
    num_jobs = int(sys.argv[2])
    seconds = asyncio.run(run_jobs(sys.argv[1], num_jobs))
    print(json.dumps({"system": "bullmq", "jobs": num_jobs, "seconds": seconds}))


if __name__ == "__main__":
    main()
