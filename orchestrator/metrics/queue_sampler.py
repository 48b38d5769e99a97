"""A queue's depth, read from Redis into gauges: backlog per lane, jobs running and delayed,
and the age of the oldest job no server has read yet.

Each queue server samples its queue in its reap loop, so the gauges stay fresh while any
server runs; several servers of one queue report the same numbers (Ray tags each series with
its worker, so take `max` over them, not `sum`). Entry IDs of a lane's stream start with the
milliseconds of Redis's clock when the job was queued: the first entry after the group's
last-delivered ID is the oldest unread job.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio

from orchestrator.metrics import definitions as metrics
from orchestrator.queue.client import NUM_LANES
from orchestrator.redis_keys import CONSUMER_GROUP, QueueKeys


async def sample_queue_depth(client: redis.asyncio.Redis, keys: QueueKeys, queue: str) -> None:
    oldest_ms: int | None = None
    for lane in range(NUM_LANES):
        backlog, first_ms = await _lane_depth(client, keys.lane(lane))
        metrics.QUEUE_BACKLOG.set(backlog, queue=queue, lane=str(lane))
        if first_ms is not None:
            oldest_ms = first_ms if oldest_ms is None else min(oldest_ms, first_ms)
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.leases)
    pipe.zcard(keys.delayed)
    running, delayed = await pipe.execute()
    metrics.JOBS_PENDING.set(int(running), queue=queue)
    metrics.JOBS_DELAYED.set(int(delayed), queue=queue)
    age = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
    metrics.OLDEST_JOB_AGE.set(age, queue=queue)


async def _lane_depth(client: redis.asyncio.Redis, lane: str) -> tuple[int, int | None]:
    """Entries of the lane not yet read by the group, and the first one's milliseconds."""
    if not await client.exists(lane):
        return 0, None
    groups: Any = await client.xinfo_groups(lane)
    group = next((g for g in groups if _text(g["name"]) == CONSUMER_GROUP), None)
    if group is None:
        return 0, None
    lag = int(group["lag"] or 0)  # None: Redis cannot tell (after deletions); as `vlmq status`
    if lag == 0:
        return 0, None
    last = _text(group["last-delivered-id"])
    first: Any = await client.xrange(lane, min=f"({last}", count=1)
    if not first:
        return lag, None
    return lag, int(_text(first[0][0]).split("-")[0])


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
