"""The client SDK against a real redis-server: what it promises its callers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.queue.client import Client
from orchestrator.queue.errors import (
    JobTimeoutError,
    NoSuchJobError,
    PayloadTooLargeError,
    QueueFullError,
)
from orchestrator.queue.schema import InvalidPayloadError, JobSpec
from orchestrator.queue.states import JobState
from tests.orchestrator.queue.conftest import QUEUE, QueueRig


def spec(job_id: str, prompt: str = "hello") -> JobSpec:
    return JobSpec(job_id, QUEUE, prompt)


def test_importing_the_client_imports_no_torch_ray_or_transformers() -> None:
    code = (
        "import sys, json; import orchestrator.queue.client; "
        "print(json.dumps(sorted(m for m in ('torch', 'ray', 'transformers', 'PIL') "
        "if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == []


def test_a_full_queue_refuses_and_says_what_was_accepted(rig: QueueRig) -> None:
    rig.client.redis.hset(rig.client.keys.queue(QUEUE).base, "max_backlog", 5)
    with pytest.raises(QueueFullError, match="max_backlog 5") as refusal:
        rig.client.submit_many(spec(f"j{i}") for i in range(8))
    assert [r.job_id for r in refusal.value.accepted] == [f"j{i}" for i in range(5)]
    assert [job for job, _ in refusal.value.refused] == ["j5", "j6", "j7"]
    assert rig.client.queue_status(QUEUE).unfinished == 5
    with pytest.raises(NoSuchJobError):
        rig.client.status("j5")


def test_one_payload_too_large_does_not_stop_the_others(rig: QueueRig) -> None:
    rig.client.redis.hset(rig.client.keys.queue(QUEUE).base, "max_payload_bytes", 200)
    with pytest.raises(PayloadTooLargeError) as refusal:
        rig.client.submit_many([spec("small"), spec("big", "x" * 300), spec("small2")])
    assert [r.job_id for r in refusal.value.accepted] == ["small", "small2"]


def test_a_bad_job_is_refused_before_anything_is_sent(rig: QueueRig) -> None:
    with pytest.raises(InvalidPayloadError, match="placeholder"):
        rig.client.submit(JobSpec("x", QUEUE, "two <image> <image>", (b"only one",)))
    assert rig.client.redis.keys(f"{rig.client.keys.tag}:job:*") == []


def test_status_wait_and_cancel_of_a_queued_job(rig: QueueRig) -> None:
    receipt = rig.client.submit(spec("queued"))
    assert receipt.created and receipt.state is JobState.QUEUED
    status = rig.client.status("queued")
    assert status.state is JobState.QUEUED and status.deliveries == 0 and status.queue == QUEUE
    with pytest.raises(JobTimeoutError):
        rig.client.wait("queued", timeout_s=0.2)
    assert rig.client.cancel("queued") is JobState.CANCELLED
    result = rig.client.wait("queued", timeout_s=5)
    assert result.state is JobState.CANCELLED and result.error is not None
    assert result.error.type == "JobCancelledError"
    with pytest.raises(NoSuchJobError, match="never"):
        rig.client.cancel("never-submitted")


def test_a_batch_counts_by_state_and_cancels_what_is_left(rig: QueueRig) -> None:
    rig.start_server()
    batch = rig.client.new_batch("b1")
    batch.submit_many([spec("fast"), spec("slow", "sleep:60"), spec("also-slow", "sleep:60")])
    assert rig.client.wait("fast", timeout_s=30).state is JobState.SUCCEEDED
    assert batch.counts().succeeded == 1 and batch.job_ids() == ["fast", "slow", "also-slow"]
    assert batch.cancel() == 2
    counts = batch.wait(timeout_s=30)
    assert (counts.succeeded, counts.cancelled, counts.open) == (1, 2, 0)
    assert {r.job_id: r.state for r in batch.results(block_s=0.1)} == {
        "fast": JobState.SUCCEEDED, "slow": JobState.CANCELLED, "also-slow": JobState.CANCELLED
    }


def test_results_come_as_jobs_finish_not_in_submission_order(rig: QueueRig) -> None:
    rig.start_server()
    batch = rig.client.new_batch()
    batch.submit_many([spec("late", "sleep:1"), spec("early")])
    assert [r.job_id for r in batch.results(block_s=0.1)] == ["early", "late"]


def test_a_second_client_sees_the_same_job(rig: QueueRig) -> None:
    other = Client(rig.redis_server.url, namespace=rig.namespace)
    rig.client.submit(spec("shared"))
    assert other.submit(spec("shared")).created is False
    assert other.status("shared").state is JobState.QUEUED
    other.close()


def test_queue_status_counts_only_counters_not_the_settings_a_server_writes(
    rig: QueueRig,
) -> None:
    rig.start_server(max_backlog=500)
    receipt = rig.client.submit(JobSpec("counted", QUEUE, "hello"))
    assert rig.client.wait(receipt.job_id, timeout_s=30).state is JobState.SUCCEEDED
    base = rig.client.keys.queue(QUEUE).base
    assert rig.client.redis.hget(base, "max_backlog") == b"500"  # the server wrote it there
    counters = rig.client.queue_status(QUEUE).counters
    assert counters["submitted"] == 1 and counters["succeeded"] == 1
    assert not {"max_backlog", "max_payload_bytes", "open", "turn"} & set(counters)
