"""Configuration of the token-range allocator; every default lives here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.redis_connection import RedisSettings
from worker.token_range import RESERVED_ID_BASE


@dataclass(frozen=True, slots=True)
class AllocatorConfig:
    # A URL, or settings with a password and TLS files; held as RedisSettings once made. The
    # config travels to the allocator actor through Ray (its own protocol, token-authenticated),
    # password included; TLS files are paths, so they must exist on the node the actor runs on.
    redis_url: str | RedisSettings = "redis://127.0.0.1:6379/0"
    namespace: str = "vlmq"  # prefix of the Redis keys; also part of the actor's name
    id_base: int = RESERVED_ID_BASE  # first reserved ID; exllamav2's embedding region starts here
    # One past the last usable ID. 2**31 keeps every ID inside int32 for any kernel that narrows
    # IDs; when an epoch fills up, a new epoch starts at id_base again.
    id_limit: int = 2**31
    chunk_size: int = 1 << 20  # IDs reserved in Redis per write: ~1,000 images of ~1,000 rows
    lease_size: int = 1 << 16  # IDs a client leases per actor round trip
    max_keys: int = 200_000  # bound of the key -> range LRU, in the actor and in each client
    sync_every: int = 256  # a client registers its new ranges with the actor after this many
    # How long the allocator actor keeps trying an unreachable Redis before it answers
    # AllocatorStateUnavailableError. Short, because the actor serves one call at a time and
    # every client waits behind it; the pipeline waits out longer outages itself, with
    # backoff between attempts (PipelineConfig.allocator_outage_timeout_s).
    redis_retry_seconds: float = 2.0
    ray_namespace: str = "vlmq"

    def __post_init__(self) -> None:
        object.__setattr__(self, "redis_url", RedisSettings.of(self.redis_url))
        if self.id_base < 0 or self.id_limit <= self.id_base:
            raise ValueError(f"need 0 <= id_base < id_limit, got {self.id_base}, {self.id_limit}")
        for name in ("chunk_size", "lease_size", "max_keys", "sync_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.chunk_size > self.id_span:
            raise ValueError(f"chunk_size {self.chunk_size} exceeds the region ({self.id_span})")
        if self.lease_size > self.chunk_size:
            # The actor carves a lease from one reserved chunk.
            raise ValueError(f"lease_size {self.lease_size} exceeds chunk_size {self.chunk_size}")

    @property
    def redis(self) -> RedisSettings:
        return RedisSettings.of(self.redis_url)

    @property
    def id_span(self) -> int:
        """How many IDs one epoch holds."""
        return self.id_limit - self.id_base

    @property
    def actor_name(self) -> str:
        return f"{self.namespace}-token-range-allocator"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AllocatorConfig:
        """Build from parsed configuration; an unknown key is an error, not a silent default."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown allocator settings: {', '.join(unknown)}")
        return cls(**values)
