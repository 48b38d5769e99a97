"""What the queue holds, as the scaler reads it: jobs waiting, and how long the oldest has.

Counts come from `Client.queue_status` (the lanes' consumer-group lag, the leases, the retry
set). The oldest wait is the age of the first lane entry no server has read yet: its stream ID
is the time it was published, by Redis's clock (a retried job is published again, so its wait
counts from its retry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.queue.client import NUM_LANES, Client
from orchestrator.queue.config import QueueConfig
from orchestrator.redis_keys import CONSUMER_GROUP, RedisKeys


@dataclass(frozen=True, slots=True)
class Backlog:
    queued: int  # published, not read by any server yet
    retrying: int  # waiting out a backoff
    running: int  # claimed, by any server
    oldest_wait_s: float  # 0 with nothing queued
    servers: int = 1  # servers of the queue heard from lately (this one among them), at least 1

    def share(self, count: int) -> int:
        """This server's share of `count` jobs of the shared backlog: each server sizes its own
        pipeline for its part, so N servers do not each grow to the bound for all of it."""
        return -(-count // self.servers)


class BacklogReader:
    def __init__(self, config: QueueConfig) -> None:
        self.queue = config.queue
        self.keys = RedisKeys(config.namespace).queue(config.queue)
        self.client = Client(config.redis, namespace=config.namespace, load_library=False)

    def read(self) -> Backlog:
        status = self.client.queue_status(self.queue)
        # A lag Redis cannot compute (None) counts as 0 there; what is unfinished and neither
        # running nor retrying is queued, whatever the lag says.
        queued = max(
            sum(status.queued_per_lane), status.unfinished - status.running - status.retrying
        )
        return Backlog(queued, status.retrying, status.running, self._oldest_wait_s(),
                       max(1, len(status.servers)))

    def close(self) -> None:
        self.client.close()

    def _oldest_wait_s(self) -> float:
        redis = self.client.redis
        seconds, micros = redis.time()
        now_ms = seconds * 1000 + micros // 1000
        oldest_ms: int | None = None
        for lane in range(NUM_LANES):
            key = self.keys.lane(lane)
            if not redis.exists(key):
                continue
            groups: Any = redis.xinfo_groups(key)
            last = next(
                (_text(group["last-delivered-id"]) for group in groups
                 if _text(group["name"]) == CONSUMER_GROUP),
                "0-0",
            )
            first: Any = redis.xrange(key, min=f"({last}", count=1)
            if first:
                published_ms = int(_text(first[0][0]).split("-")[0])
                oldest_ms = published_ms if oldest_ms is None else min(oldest_ms, published_ms)
        return 0.0 if oldest_ms is None else max(now_ms - oldest_ms, 0) / 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
