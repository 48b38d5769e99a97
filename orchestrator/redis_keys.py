"""Every Redis key vlmq writes, in one place, so operators can see what a namespace holds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key names under one namespace; deployments that share a Redis use different namespaces."""

    namespace: str = "vlmq"

    @property
    def allocator_state(self) -> str:
        """Hash with fields `epoch` and `hwm`: the token-ID high-water mark and its epoch."""
        return f"{self.namespace}:allocator:state"
