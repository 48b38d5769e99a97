"""The batch functions on their own: open, close (cancel and expiry), progress, usage.

Called as any client would, against a real redis-server; payloads are opaque except where a
result's token counts are read (a msgpack map, as encode_result writes it).
"""

from __future__ import annotations

import time

import msgpack
import pytest
import redis

from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.library import ensure_library
from orchestrator.redis_keys import RedisKeys
from tests.orchestrator.queue.test_functions import claim

KEYS = RedisKeys("t")
QUEUE = KEYS.queue("default")
BATCH = KEYS.batch("b1")


@pytest.fixture
def client(redis_server: PrivateRedisServer) -> redis.Redis:
    connection = redis_server.client()
    ensure_library(connection)
    return connection


def submit_many(client: redis.Redis, job_ids: list[str], *options: str) -> list[list[bytes]]:
    args: list[str] = [str(2 + len(options)), "batch", "b1", *options]
    for job_id in job_ids:
        args += [job_id, "1", f"payload of {job_id}"]
    reply: list[list[bytes]] = client.fcall("vlmq_submit_many", 1, QUEUE.base, *args)
    return reply


def open_batch(client: redis.Redis, expires_ms: int) -> dict[str, str]:
    reply = client.fcall("vlmq_open_batch", 1, BATCH.base, str(expires_ms), "60000",
                         "input_file", "in.jsonl")
    fields = [value.decode() if isinstance(value, bytes) else str(value) for value in reply[1:]]
    return {"created": str(reply[0]), **dict(zip(fields[::2], fields[1::2], strict=True))}


def close(client: redis.Redis, reason: str, max_jobs: int = 1000) -> list[object]:
    reply: list[object] = client.fcall("vlmq_close_batch", 1, BATCH.base, reason, str(max_jobs))
    return reply


def finish(client: redis.Redis, job_id: str, fence: str, action: str, result: bytes) -> str:
    reply = client.fcall("vlmq_finish", 1, QUEUE.base, job_id, fence, action, "0", result)
    return str(reply[0].decode())


def field(client: redis.Redis, key: str, name: str) -> str | None:
    value = client.hget(key, name)
    return value.decode() if value is not None else None


def test_a_batch_is_opened_once_and_keeps_its_first_window(client: redis.Redis) -> None:
    later = int(time.time() * 1000) + 3_600_000
    first = open_batch(client, later)
    again = open_batch(client, later + 999_999)
    assert (first["created"], again["created"]) == ("1", "0")
    assert again["expires_ms"] == str(later) and again["input_file"] == "in.jsonl"
    assert client.zscore(KEYS.batch_deadlines, "b1") == later
    assert 0 < client.pttl(BATCH.info) <= 3_600_000 + 60_000


def test_cancel_keeps_finished_jobs_cancels_queued_and_stops_running(client: redis.Redis) -> None:
    open_batch(client, 0)
    submit_many(client, ["done", "running", "queued1", "queued2"])
    _, claims = claim(client, 2)
    fences = {job_id: fence for job_id, fence, _ in claims}
    assert finish(client, "done", fences["done"], "succeeded", b"r") == "succeeded"
    # Two calls of one job each: the cursor carries the close across calls.
    replies = [close(client, "cancelled", max_jobs=1) for _ in range(4)]
    assert [int(r[0]) for r in replies] == [0, 0, 0, 1]  # type: ignore[call-overload]
    assert sum(int(r[2]) for r in replies) == 2  # type: ignore[call-overload]
    assert sum(int(r[3]) for r in replies) == 1  # type: ignore[call-overload]
    assert field(client, KEYS.job("done"), "state") == "succeeded"
    for job_id in ("queued1", "queued2"):
        assert field(client, KEYS.job(job_id), "state") == "cancelled"
        assert field(client, KEYS.job(job_id), "cancel_reason") == "batch_cancelled"
    assert field(client, KEYS.job("running"), "cancel") == "1"
    assert field(client, KEYS.job("running"), "cancel_reason") == "batch_cancelled"
    # The batch takes no more jobs, and says why.
    with pytest.raises(redis.ResponseError, match="BATCH_CLOSED batch b1 is cancelled"):
        submit_many(client, ["late"])
    assert field(client, BATCH.info, "closed") == "cancelled"


def test_expiry_waits_for_the_window_by_redis_clock(client: redis.Redis) -> None:
    open_batch(client, int(time.time() * 1000) + 3_600_000)
    submit_many(client, ["a"])
    with pytest.raises(redis.ResponseError, match="NOT_DUE"):
        close(client, "expired")
    assert field(client, KEYS.job("a"), "state") == "queued"


def test_a_claim_after_the_window_expires_the_job_instead_of_running_it(
    client: redis.Redis,
) -> None:
    open_batch(client, int(time.time() * 1000) + 300)
    submit_many(client, ["a", "b"])
    time.sleep(0.4)
    _, claims = claim(client, 2)
    assert claims == []
    for job_id in ("a", "b"):
        assert field(client, KEYS.job(job_id), "state") == "cancelled"
        assert field(client, KEYS.job(job_id), "cancel_reason") == "batch_expired"
    assert field(client, BATCH.counts, "expired") == "2"
    assert field(client, BATCH.counts, "open") == "0"
    # The finished batch leaves the deadlines; closing it as expired still marks it.
    assert client.zscore(KEYS.batch_deadlines, "b1") is None
    assert int(close(client, "expired")[0]) == 1  # type: ignore[call-overload]
    assert field(client, BATCH.info, "closed") == "expired"


def test_progress_is_recorded_with_the_jobs_and_only_when_none_was_refused(
    client: redis.Redis,
) -> None:
    open_batch(client, 0)
    submit_many(client, ["a", "b"], "progress", "3")
    assert field(client, BATCH.info, "next_line") == "3"
    client.hset(QUEUE.base, "max_backlog", "3")
    replies = submit_many(client, ["c", "d"], "progress", "5")
    assert [r[0] for r in replies] == [b"created", b"refused"]
    assert field(client, BATCH.info, "next_line") == "3"
    with pytest.raises(redis.ResponseError, match="progress needs a batch"):
        client.fcall("vlmq_submit_many", 1, QUEUE.base, "2", "progress", "9", "x", "1", "p")


def test_a_batch_counts_the_tokens_of_its_succeeded_jobs(client: redis.Redis) -> None:
    submit_many(client, ["a", "b"])
    _, claims = claim(client, 2)
    for job_id, fence, _ in claims:
        result = msgpack.packb({"v": 1, "prompt_tokens": 10, "completion_tokens": 3})
        finish(client, job_id, fence, "succeeded", result)
    assert (field(client, BATCH.counts, "prompt_tokens"),
            field(client, BATCH.counts, "completion_tokens")) == ("20", "6")
    assert field(client, BATCH.counts, "finished_ms") is not None


def test_bad_arguments_are_refused(client: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="INVALID"):
        close(client, "deleted")
    with pytest.raises(redis.ResponseError, match="INVALID"):
        client.fcall("vlmq_open_batch", 1, BATCH.base, "-5", "1000")
    with pytest.raises(redis.ResponseError, match="INVALID a cancel reason"):
        client.fcall("vlmq_cancel", 1, KEYS.job("x"), "Bad Reason")
