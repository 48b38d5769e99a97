"""The Redis Functions library on its own: each state change, called as any client would.

Payloads here are opaque bytes: the functions never read them (the server validates them on
claim; see test_server.py). A real redis-server, started per test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.library import (
    LibraryMismatchError,
    ensure_library,
    expected_version,
    library_code,
)
from orchestrator.redis_keys import CONSUMER_GROUP, RedisKeys
from tests.support.waiting import wait_for

KEYS = RedisKeys("t")
QUEUE = KEYS.queue("default")


@pytest.fixture
def client(redis_server: PrivateRedisServer) -> redis.Redis:
    connection = redis_server.client()
    ensure_library(connection)
    return connection


def submit(client: redis.Redis, job_id: str, priority: int = 1, *options: str) -> list[bytes]:
    reply: list[bytes] = client.fcall(
        "vlmq_submit", 1, QUEUE.base, job_id, str(priority), *options, f"payload of {job_id}"
    )
    return reply


def claim(client: redis.Redis, n: int, consumer: str = "s1", lease_ms: int = 30_000
          ) -> tuple[bool, list[tuple[str, str, int]]]:
    reply = client.fcall("vlmq_claim", 1, QUEUE.base, consumer, str(n), str(lease_ms))
    claims = [
        (reply[i].decode(), reply[i + 1].decode(), int(reply[i + 2]))
        for i in range(1, len(reply), 5)
    ]
    return reply[0] == 1, claims


def finish(client: redis.Redis, *items: tuple[str, str, str]) -> list[str]:
    args: list[str] = []
    for job_id, fence, action in items:
        args += [job_id, fence, action, "0", f"result of {job_id}"]
    return [a.decode() for a in client.fcall("vlmq_finish", 1, QUEUE.base, *args)]


def state(client: redis.Redis, job_id: str) -> str | None:
    value = client.hget(KEYS.job(job_id), "state")
    return value.decode() if value is not None else None


def lag(client: redis.Redis, priority: int = 1) -> int | None:
    groups = client.xinfo_groups(QUEUE.lane(priority))
    (group,) = [g for g in groups if g["name"] == CONSUMER_GROUP.encode()]
    value: int | None = group["lag"]
    return value


def test_a_job_goes_from_submit_to_one_result(client: redis.Redis) -> None:
    assert submit(client, "j1") == [b"created", b"j1", b"queued"]
    more, claims = claim(client, 10)
    assert not more and [c[0] for c in claims] == ["j1"]
    (_, fence, deliveries) = claims[0]
    assert deliveries == 1 and state(client, "j1") == "running"
    assert finish(client, ("j1", fence, "succeeded")) == ["succeeded"]
    job = client.hgetall(KEYS.job("j1"))
    assert job[b"state"] == b"succeeded" and job[b"result"] == b"result of j1"
    # The job left the stream and the leases, and its hash expires with its result.
    assert client.xlen(QUEUE.lane(1)) == 0 and client.zcard(QUEUE.leases) == 0
    assert 0 < client.pttl(KEYS.job("j1")) <= 86_400_000
    # The usual path is told by its timestamps; the history holds only the unusual events.
    assert int(job[b"created_ms"]) <= int(job[b"started_ms"]) <= int(job[b"finished_ms"])
    assert job[b"owner"] == b"s1" and b"history" not in job


def test_submitting_an_id_twice_is_one_job(client: redis.Redis) -> None:
    submit(client, "same")
    assert submit(client, "same", 0) == [b"exists", b"same", b"queued"]
    assert client.xlen(QUEUE.lane(1)) == 1 and client.xlen(QUEUE.lane(0)) == 0
    _, claims = claim(client, 10)
    finish(client, ("same", claims[0][1], "succeeded"))
    assert submit(client, "same") == [b"exists", b"same", b"succeeded"]
    assert client.hget(QUEUE.base, "submitted") == b"1"


def test_a_stale_fence_cannot_write_or_renew(client: redis.Redis) -> None:
    submit(client, "j1")
    _, [(_, first_fence, _)] = claim(client, 1, lease_ms=1)
    time.sleep(0.01)
    assert client.fcall("vlmq_reap", 1, QUEUE.base, "100") == [1, 0]
    _, [(_, second_fence, deliveries)] = claim(client, 1, consumer="s2")
    assert int(second_fence) > int(first_fence) and deliveries == 2
    renewed = client.fcall("vlmq_renew", 1, QUEUE.base, "s1", "30000", "j1", first_fence)
    assert renewed == [b"lost"]
    assert finish(client, ("j1", first_fence, "succeeded")) == ["stale"]
    assert finish(client, ("j1", second_fence, "failed")) == ["failed"]
    assert finish(client, ("j1", second_fence, "succeeded")) == ["stale"]  # one result only
    assert state(client, "j1") == "failed"
    assert client.hget(QUEUE.base, "stale_refused") == b"2"
    history = client.hget(KEYS.job("j1"), "history").decode()
    assert [line.split(" ", 1)[1] for line in history.splitlines()] == [
        "lease of s1 expired; requeued"
    ]


def test_a_renewed_lease_is_not_reaped(client: redis.Redis) -> None:
    submit(client, "long")
    _, [(_, fence, _)] = claim(client, 1, lease_ms=200)
    for _ in range(4):
        time.sleep(0.1)
        assert client.fcall("vlmq_renew", 1, QUEUE.base, "s1", "200", "long", fence) == [b"ok"]
        assert client.fcall("vlmq_reap", 1, QUEUE.base, "100") == [0, 0]
    assert state(client, "long") == "running"


def test_deliveries_past_the_limit_send_a_job_to_the_dead_letters(client: redis.Redis) -> None:
    submit(client, "poison", 1, "max_deliveries", "2")
    for delivery in (1, 2):
        _, [(_, _, deliveries)] = claim(client, 1, lease_ms=1)
        assert deliveries == delivery
        time.sleep(0.01)
        client.fcall("vlmq_reap", 1, QUEUE.base, "100")  # its server "died": lease expired
    assert claim(client, 1)[1] == []  # the third claim reads it and sends it away
    assert state(client, "poison") == "dead"
    (entry,) = client.xrange(QUEUE.dead)
    assert entry[1][b"job"] == b"poison" and b"max_deliveries 2" in entry[1][b"reason"]
    assert client.xlen(QUEUE.lane(1)) == 0


def test_a_retry_waits_its_delay_then_runs_again(client: redis.Redis) -> None:
    submit(client, "flaky")
    _, [(_, fence, _)] = claim(client, 1)
    args = ["flaky", fence, "retry", "150", "last error"]
    assert client.fcall("vlmq_finish", 1, QUEUE.base, *args) == [b"queued"]
    assert client.fcall("vlmq_reap", 1, QUEUE.base, "100") == [0, 0]  # not due yet
    assert claim(client, 1) == (False, [])
    time.sleep(0.2)
    assert client.fcall("vlmq_reap", 1, QUEUE.base, "100") == [0, 1]
    _, [(_, _, deliveries)] = claim(client, 1)
    assert deliveries == 2


def test_a_release_hands_the_job_back_without_counting_a_delivery(client: redis.Redis) -> None:
    submit(client, "j1")
    _, [(_, fence, _)] = claim(client, 1)
    assert finish(client, ("j1", fence, "release")) == ["queued"]
    _, [(_, _, deliveries)] = claim(client, 1, consumer="s2")
    assert deliveries == 1


def test_cancel_keeps_lag_right_and_the_entry_until_it_is_read(client: redis.Redis) -> None:
    for i in range(10):
        submit(client, f"j{i}")
    for i in (0, 4, 9):
        assert client.fcall("vlmq_cancel", 1, KEYS.job(f"j{i}")) == [b"cancelled"]
    # Nothing undelivered was deleted: lag still counts every entry (an XDEL would make it nil).
    assert lag(client) == 10 and client.xlen(QUEUE.lane(1)) == 10
    _, claims = claim(client, 4)
    assert [c[0] for c in claims] == ["j1", "j2", "j3"]  # j0 was read and dropped
    assert lag(client) == 6  # the 6 entries not read yet, j4 and j9 among them
    _, claims = claim(client, 100)
    assert [c[0] for c in claims] == ["j5", "j6", "j7", "j8"]
    assert lag(client) == 0 and client.xlen(QUEUE.lane(1)) == 7  # the 7 running ones
    assert state(client, "j9") == "cancelled"


def test_cancel_of_a_running_job_flags_it_for_its_server(client: redis.Redis) -> None:
    submit(client, "j1")
    _, [(_, fence, _)] = claim(client, 1)
    assert client.fcall("vlmq_cancel", 1, KEYS.job("j1")) == [b"running"]
    assert client.fcall("vlmq_renew", 1, QUEUE.base, "s1", "30000", "j1", fence) == [b"cancel"]
    assert finish(client, ("j1", fence, "cancelled")) == ["cancelled"]
    assert client.fcall("vlmq_cancel", 1, KEYS.job("j1")) == [b"cancelled"]
    with pytest.raises(redis.ResponseError, match="NO_SUCH_JOB"):
        client.fcall("vlmq_cancel", 1, KEYS.job("never"))


def test_a_cancelled_running_job_never_runs_again(client: redis.Redis) -> None:
    """Its server died after the cancel was asked, or handed it back, or it failed: either
    way it ends cancelled instead of going back to its lane."""
    for job_id in ("lost", "released", "failed"):
        submit(client, job_id)
    _, claims = claim(client, 3, lease_ms=1)
    fences = {job: fence for job, fence, _ in claims}
    for job_id in fences:
        assert client.fcall("vlmq_cancel", 1, KEYS.job(job_id)) == [b"running"]
    time.sleep(0.01)
    assert finish(client, ("released", fences["released"], "release")) == ["cancelled"]
    args = ["failed", fences["failed"], "retry", "10", "an error"]
    assert client.fcall("vlmq_finish", 1, QUEUE.base, *args) == [b"cancelled"]
    assert client.fcall("vlmq_reap", 1, QUEUE.base, "100") == [0, 0]
    assert [state(client, job) for job in ("lost", "released", "failed")] == ["cancelled"] * 3
    assert claim(client, 10)[1] == []
    assert client.hget(QUEUE.base, "open") == b"0"


def test_the_backlog_cap_refuses_and_trims_nothing(client: redis.Redis) -> None:
    client.hset(QUEUE.base, "max_backlog", 3)
    for i in range(3):
        submit(client, f"j{i}")
    with pytest.raises(redis.ResponseError, match="QUEUE_FULL"):
        submit(client, "j3")
    assert client.xlen(QUEUE.lane(1)) == 3 and state(client, "j3") is None
    _, [(_, fence, _)] = claim(client, 1)
    finish(client, ("j0", fence, "succeeded"))
    assert submit(client, "j3")[0] == b"created"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", "1", b"p"], "job_id"),
        (["has space", "1", b"p"], "job_id"),
        (["x" * 257, "1", b"p"], "job_id"),
        (["j", "3", b"p"], "priority"),
        (["j", "1"], "expected job_id priority"),
        (["j", "1", "result_ttl_ms", "-5", b"p"], "result_ttl_ms"),
        (["j", "1", "max_deliveries", "0", b"p"], "max_deliveries"),
    ],
)
def test_bad_submissions_are_refused_with_the_argument_named(
    client: redis.Redis, args: list[str | bytes], message: str
) -> None:
    with pytest.raises(redis.ResponseError, match=message):
        client.fcall("vlmq_submit", 1, QUEUE.base, *args)
    assert client.keys(f"{KEYS.tag}:job:*") == []


def test_an_oversized_payload_is_refused(client: redis.Redis) -> None:
    client.hset(QUEUE.base, "max_payload_bytes", 100)
    with pytest.raises(redis.ResponseError, match="TOO_LARGE"):
        client.fcall("vlmq_submit", 1, QUEUE.base, "big", "1", b"x" * 101)


def test_high_lanes_go_first_and_low_lanes_are_not_starved(client: redis.Redis) -> None:
    for i in range(40):
        submit(client, f"high{i}", 0)
        submit(client, f"low{i}", 2)
    order: list[str] = []
    for _ in range(16):
        _, claims = claim(client, 1)
        order += [c[0] for c in claims]
    assert order[0].startswith("high")
    lows = [job for job in order if job.startswith("low")]
    # One slot in 8 goes to a lower lane first, the lanes taking turns: in 16 slots, 1 of
    # them to lane 2 (the other fair slot found lane 1 empty and fell back to lane 0).
    assert len(lows) == 1 and len(order) == 16


def test_entries_without_a_job_are_dropped(client: redis.Redis) -> None:
    submit(client, "real")
    client.xadd(QUEUE.lane(1), {"job": "ghost"})
    client.xadd(QUEUE.lane(1), {"junk": "no job field"})
    _, claims = claim(client, 10)
    assert [c[0] for c in claims] == ["real"]
    assert client.hget(QUEUE.base, "dropped_entries") == b"2"
    assert client.xlen(QUEUE.lane(1)) == 1


def test_a_batch_counts_its_jobs_by_state_and_expires_when_done(client: redis.Redis) -> None:
    for i in range(3):
        submit(client, f"b{i}", 1, "batch", "B", "result_ttl_ms", "60000")
    batch = KEYS.batch("B")
    _, claims = claim(client, 2)
    assert client.hgetall(batch.counts) == {
        b"total": b"3", b"open": b"3", b"queued": b"1", b"running": b"2"
    }
    finish(client, *((job, fence, "succeeded") for job, fence, _ in claims))
    client.fcall("vlmq_cancel", 1, KEYS.job("b2"))
    counts = client.hgetall(batch.counts)
    assert counts[b"open"] == b"0" and counts[b"succeeded"] == b"2"
    assert counts[b"cancelled"] == b"1"
    assert [e[1][b"job"] for e in client.xrange(batch.events)] == [b"b0", b"b1", b"b2"]
    assert all(0 < client.pttl(key) <= 60_000 for key in (batch.counts, batch.jobs, batch.events))


def test_a_newer_library_is_left_alone(redis_server: PrivateRedisServer) -> None:
    connection = redis_server.client()
    newer = library_code().replace(expected_version(), "99:feedface")
    connection.function_load(newer)
    with pytest.raises(LibraryMismatchError, match="99:feedface"):
        ensure_library(connection)
    older = library_code().replace(expected_version(), "0:oldcode")
    connection.function_load(older, replace=True)
    ensure_library(connection)  # an older one is replaced
    assert connection.fcall_ro("vlmq_version", 0).decode() == expected_version()


def test_memory_stays_bounded_as_jobs_come_and_go(tmp_path: Path) -> None:
    """5,000 jobs through submit, claim and finish with a short result TTL: afterwards Redis
    holds what it held before (the streams, emptied, and the queue's hash), nothing per job.
    `python -m bench.queue_memory` shows the same for 100,000 jobs with used_memory."""
    server = PrivateRedisServer(tmp_path, persist_every_write=False)
    server.start()
    try:
        connection = server.client()
        ensure_library(connection)
        for start in range(0, 5000, 500):
            pipe = connection.pipeline(transaction=False)
            for i in range(start, start + 500):
                pipe.fcall("vlmq_submit", 1, QUEUE.base, f"j{i}", str(i % 3), "batch", "B",
                           "result_ttl_ms", "200", b"p")
            pipe.execute()
            while True:
                _, claims = claim(connection, 500)
                if not claims:
                    break
                finish(connection, *((job, fence, "succeeded") for job, fence, _ in claims))
        assert connection.hget(QUEUE.base, "succeeded") == b"5000"
        assert sum(connection.xlen(QUEUE.lane(p)) for p in range(3)) == 0
        expected = 7  # the queue hash, three lanes, the wake list, the servers, the queue set
        # Expired keys go as Redis samples them.
        wait_for(lambda: connection.dbsize() <= expected, "every job and batch key expired")
        left = sorted(key.decode() for key in connection.keys("*"))
        assert left == sorted(
            [QUEUE.base, *(QUEUE.lane(p) for p in range(3)), QUEUE.wake, QUEUE.servers,
             KEYS.queues]
        )
    finally:
        server.stop()
