"""`vlmq status`, run as a user runs it, against a real redis-server."""

from __future__ import annotations

import subprocess
import sys
import uuid

from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.schema import JobSpec


def status(redis_server: PrivateRedisServer, namespace: str, *args: str
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "status", "--redis-url", redis_server.url,
         "--namespace", namespace, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_status_shows_a_queue_nobody_serves_and_its_waiting_job(
    redis_server: PrivateRedisServer,
) -> None:
    namespace = f"cli-{uuid.uuid4().hex[:6]}"
    with Client(redis_server.url, namespace=namespace) as client:
        client.new_batch("b1").submit(JobSpec("waiting", "captions", "hello", priority=0))
    done = status(redis_server, namespace, "--queue", "captions")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "queue captions: 1 unfinished (high 1, normal 0, low 0 queued; 0 running, "
        "0 waiting to retry)",
        "served by nobody: its jobs wait until a `vlmq serve --queue captions` starts",
    ]
    job = status(redis_server, namespace, "--job", "waiting")
    assert job.stdout.startswith("job waiting: queued on queue captions, 0 deliveries")
    batch = status(redis_server, namespace, "--batch", "b1")
    assert batch.stdout.startswith("batch b1: 1 jobs, 1 unfinished; 1 queued")
    missing = status(redis_server, namespace, "--job", "nope")
    assert missing.returncode == 1 and "no job nope" in missing.stderr
