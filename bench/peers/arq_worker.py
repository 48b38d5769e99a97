"""The arq side of bench/queue_peers.py: one worker process running no-op jobs until SIGTERM.

Tuned for throughput: it polls the queue every 10 ms (arq's default is 0.5 s), runs up to 1,000
jobs at once and keeps results so the submitter can read them. It prints "ready" when it starts
polling. Runs in arq's own venv, not vlmq's.
Usage: .bench-venvs/arq/bin/python bench/peers/arq_worker.py REDIS_URL
"""

from __future__ import annotations

import sys
from typing import Any

# Only the peer's venv has arq; the main venv type-checks this file without it.
from arq.connections import RedisSettings  # type: ignore[import-not-found, unused-ignore]
from arq.worker import Worker  # type: ignore[import-not-found, unused-ignore]

POLL_DELAY_S = 0.01
MAX_JOBS = 1000
KEEP_RESULT_S = 3600


async def noop(ctx: dict[str, Any]) -> int:
    return 1


async def announce_ready(ctx: dict[str, Any]) -> None:
    # on_startup runs once the worker is connected, just before its first poll.
    print("ready", flush=True)


def main() -> None:
    worker = Worker(
        functions=[noop],
        redis_settings=RedisSettings.from_dsn(sys.argv[1]),
        on_startup=announce_ready,
        poll_delay=POLL_DELAY_S,
        max_jobs=MAX_JOBS,
        keep_result=KEEP_RESULT_S,
    )
    worker.run()  # until SIGTERM, which arq handles by closing the worker


if __name__ == "__main__":
    main()
