"""Serve processes killed, stopped and drained under a batch (a scripted runner at the
declared seam; `test_serve.py` does the same with the real pipeline). A history checker
runs after each: every accepted job ended exactly once, none was lost."""

from __future__ import annotations

import ast
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.states import JobState
from tests.support.queue_history import check_history
from tests.support.serve_process import ServeProcess
from tests.support.waiting import wait_for

QUEUE = "default"


@pytest.fixture
def namespace() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(redis_server: PrivateRedisServer, namespace: str) -> Iterator[Client]:
    client = Client(redis_server.url, namespace=namespace, max_deliveries=5)
    yield client
    client.close()


@pytest.fixture
def start_serve(
    redis_server: PrivateRedisServer, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., ServeProcess]]:
    """Starts a scripted serve process on the test's queue; every one is stopped afterwards."""
    made: list[ServeProcess] = []

    def start(lease_s: float = 2.0) -> ServeProcess:
        process = ServeProcess(
            "tests.support.scripted_serve", "--redis-url", redis_server.url, "--queue", QUEUE,
            "--namespace", namespace, "--lease-s", str(lease_s), "--capacity", "8",
            "--drain-grace-s", "2",
            log=tmp_path / f"serve-{len(made)}.log",
        )
        made.append(process)
        return process.start()

    yield start
    for process in made:
        process.stop()


def sleeping_jobs(n: int, seconds: float) -> list[JobSpec]:
    return [JobSpec(f"j{i:03d}", QUEUE, f"sleep:{seconds}") for i in range(n)]


def test_kill_9_mid_batch_then_restart_completes_every_job_once(
    client: Client, start_serve: Callable[..., ServeProcess]
) -> None:
    first = start_serve()
    batch = client.new_batch()
    receipts = batch.submit_many(sleeping_jobs(60, 0.1))
    wait_for(lambda: batch.counts().succeeded >= 10, "some jobs done")
    first.kill()
    assert batch.counts().running > 0  # it died holding jobs
    start_serve()
    wait_for(lambda: batch.counts().done, "every job done", timeout_s=120)
    history = check_history(client, batch, receipts, QUEUE)
    assert history.count(JobState.SUCCEEDED) == 60
    # The jobs the dead server held were delivered again: vlmq counted both claims.
    assert max(history.deliveries.values()) == 2


def test_a_stopped_server_past_its_lease_loses_the_job_and_its_late_result(
    client: Client, start_serve: Callable[..., ServeProcess]
) -> None:
    zombie = start_serve(lease_s=1.0)
    client.submit(JobSpec("held", QUEUE, "sleep:3"))
    wait_for(lambda: client.status("held").state is JobState.RUNNING, "held runs")
    zombie.signal(signal.SIGSTOP)  # alive, but silent: no renewals
    start_serve(lease_s=1.0)
    result = client.wait("held", timeout_s=60)
    assert result.state is JobState.SUCCEEDED and result.deliveries == 2
    zombie.signal(signal.SIGCONT)  # it finishes its run and tries to report it
    queue_stats = client.keys.queue(QUEUE).base
    zombie.signal(signal.SIGTERM)
    assert zombie.wait() == 0
    counters = ast.literal_eval(zombie.output.split("counters ", 1)[1].splitlines()[0])
    # Refused, and counted: its late completion reached Redis and was refused for its stale
    # fence, or a renewal told it first that the job was no longer its to report (or both:
    # the renewal came after the completion was queued to be written).
    refused_by_redis = int(client.redis.hget(queue_stats, "stale_refused") or 0)
    assert counters["succeeded"] == 0
    assert counters["stale_refused"] + counters["leases_lost"] >= 1
    assert refused_by_redis == counters["stale_refused"]
    assert client.status("held").deliveries == 2
    assert client.result("held") == result  # the one result stands


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_drains_and_hands_back_at_once(
    client: Client, start_serve: Callable[..., ServeProcess], signum: int
) -> None:
    server = start_serve(lease_s=60.0)
    batch = client.new_batch()
    receipts = batch.submit_many(
        [JobSpec("short", QUEUE, "sleep:0.5"), JobSpec("long", QUEUE, "sleep:600")]
    )
    wait_for(lambda: batch.counts().running == 2, "both run")
    server.signal(signum)
    assert server.wait() == 0
    assert client.status("short").state is JobState.SUCCEEDED
    long = client.status("long")
    # Back in the queue now, not after its 60 s lease; the drain cost it no delivery.
    assert long.state is JobState.QUEUED and long.deliveries == 0
    assert "draining" in server.output
    assert client.cancel("long") is JobState.CANCELLED
    # No server runs: the cancelled job's entry waits, undeleted, for a claim to read it,
    # and the lag autoscalers read still counts it.
    lanes = client.queue_status(QUEUE)
    assert lanes.lag_per_lane[1] == 1 and lanes.unfinished == 0
    assert batch.counts().open == 0 and len(receipts) == 2


def test_two_serves_share_the_work_and_killing_one_loses_nothing(
    client: Client, start_serve: Callable[..., ServeProcess]
) -> None:
    first = start_serve()
    start_serve()
    batch = client.new_batch()
    receipts = batch.submit_many(sleeping_jobs(80, 0.05))
    wait_for(lambda: batch.counts().succeeded >= 20, "some jobs done")
    first.kill()
    wait_for(lambda: batch.counts().done, "every job done", timeout_s=120)
    history = check_history(client, batch, receipts, QUEUE)
    assert history.count(JobState.SUCCEEDED) == 80
    owners = {client.redis.hget(client.keys.job(r.job_id), "owner") for r in receipts}
    assert len(owners) == 2  # both served
