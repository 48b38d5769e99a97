"""Fixtures of the queue tests: a client and an in-process server on a real redis-server."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.serve import ServerThread
from tests.support.queue_runners import ScriptedRunner

QUEUE = "default"


@dataclass
class QueueRig:
    redis_server: PrivateRedisServer
    namespace: str
    client: Client
    runner: ScriptedRunner
    servers: list[ServerThread]

    def config(self, **overrides: Any) -> QueueConfig:
        # Short leases and waits, so failures show in seconds.
        fast = QueueConfig(
            self.redis_server.url, QUEUE, self.namespace, lease_s=3.0, renew_every_s=0.5,
            reap_every_s=0.2, idle_wait_s=0.2, drain_grace_s=5.0, retry_base_s=0.05,
            retry_cap_s=0.2,
        )
        return dataclasses.replace(fast, **overrides)

    def start_server(self, runner: ScriptedRunner | None = None, **overrides: Any
                     ) -> ServerThread:
        server = ServerThread(self.config(**overrides), runner or self.runner)
        server.start()
        self.servers.append(server)
        return server


@pytest.fixture
def rig(redis_server: PrivateRedisServer) -> Iterator[QueueRig]:
    namespace = f"q-{uuid.uuid4().hex[:8]}"
    client = Client(redis_server.url, namespace=namespace, max_deliveries=3)
    rig = QueueRig(redis_server, namespace, client, ScriptedRunner(capacity=8), [])
    yield rig
    for server in rig.servers:
        server.stop()
    client.close()
