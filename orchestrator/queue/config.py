"""What a queue server and a client need to know; defaults in one place."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from orchestrator.redis_connection import RedisSettings
from orchestrator.redis_keys import check_name


def new_consumer_name() -> str:
    """Unique per process start: `host:pid:random`, so a restarted server is a new consumer."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """One `vlmq serve`: one queue of one deployment."""

    # A URL, or settings with a password and TLS files; held as RedisSettings once made, so a
    # bad URL fails here and repr() masks the password.
    redis_url: str | RedisSettings
    queue: str = "default"
    namespace: str = "vlmq"
    consumer: str = field(default_factory=new_consumer_name)
    # A claim holds its job for lease_s; the server renews every renew_every_s, so two
    # renewals may fail before another server may take the job.
    lease_s: float = 30.0
    renew_every_s: float = 10.0
    reap_every_s: float = 1.0  # how often expired leases and due retries are looked for
    idle_wait_s: float = 1.0  # an idle server waits this long for a submission's wake-up
    # On SIGTERM: how long in-flight jobs may take before they are handed back undone.
    drain_grace_s: float = 30.0
    max_backlog: int = 100_000  # unfinished jobs the queue accepts; submit refuses past it
    max_payload_bytes: int = 64 << 20
    retry_base_s: float = 1.0  # backoff before the first retry; doubles per delivery
    retry_cap_s: float = 60.0
    max_finishes_per_call: int = 256  # results written per round trip

    def __post_init__(self) -> None:
        object.__setattr__(self, "redis_url", RedisSettings.of(self.redis_url))
        check_name("queue", self.queue)
        check_name("namespace", self.namespace)
        for name in ("lease_s", "renew_every_s", "reap_every_s", "idle_wait_s",
                     "retry_base_s", "retry_cap_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.drain_grace_s < 0:
            raise ValueError(f"drain_grace_s must be >= 0, got {self.drain_grace_s}")
        if self.renew_every_s >= self.lease_s:
            raise ValueError(
                f"renew_every_s ({self.renew_every_s}) must be shorter than lease_s "
                f"({self.lease_s}), or every lease ends before it is renewed"
            )
        for name in ("max_backlog", "max_payload_bytes", "max_finishes_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def redis(self) -> RedisSettings:
        return RedisSettings.of(self.redis_url)

    @property
    def lease_ms(self) -> int:
        return max(1, round(self.lease_s * 1000))
