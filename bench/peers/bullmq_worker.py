"""The BullMQ side of bench/queue_peers.py: one worker process running no-op jobs until SIGTERM.

Python `bullmq`, 50 jobs at once; completed jobs stay in the completed set (BullMQ's default),
where the submitter counts them. It prints "ready" once the worker's loop has started. Runs in
BullMQ's own venv, not vlmq's.
Usage: .bench-venvs/bullmq/bin/python bench/peers/bullmq_worker.py REDIS_URL
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

# Only the peer's venv has bullmq; the main venv type-checks this file without it.
from bullmq import Worker  # type: ignore[import-not-found, import-untyped, unused-ignore]

QUEUE_NAME = "vlmq-bench"  # bullmq_submit.py adds to the same queue
CONCURRENCY = 50
READY_POLL_S = 0.001


async def noop(job: Any, token: str) -> int:
    return 1


async def serve(redis_url: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    worker = Worker(QUEUE_NAME, noop, {"connection": redis_url, "concurrency": CONCURRENCY})
    # The constructor only schedules the worker's loop; `running` turns true when it has begun.
    while not worker.running:
        await asyncio.sleep(READY_POLL_S)
    print("ready", flush=True)
    await stop.wait()
    await worker.close(force=True)  # nothing is in flight by then; no need to wait out a poll


def main() -> None:
    asyncio.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
