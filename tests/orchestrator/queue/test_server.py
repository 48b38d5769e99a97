"""The queue server in-process (its runner scripted at the declared seam), against a real
redis-server: outcomes, retries, dead letters, cancels, hostile payloads, drains, outages."""

from __future__ import annotations

import msgpack
import pytest

from orchestrator.queue.schema import JobSpec, encode_job
from orchestrator.queue.states import JobState
from tests.orchestrator.queue.conftest import QUEUE, QueueRig
from tests.support.queue_history import check_history
from tests.support.queue_runners import ScriptedRunner
from tests.support.waiting import wait_for


def spec(job_id: str, prompt: str = "hello", **fields: object) -> JobSpec:
    return JobSpec(job_id, QUEUE, prompt, **fields)  # type: ignore[arg-type]


def test_jobs_end_each_as_their_runner_says(rig: QueueRig) -> None:
    rig.start_server()
    batch = rig.client.new_batch()
    receipts = batch.submit_many(
        [spec("ok", metadata={"row": 7}), spec("bad", "bad input"), spec("flaky", "transient")]
    )
    results = {r.job_id: r for r in batch.results(block_s=0.2)}
    assert results["ok"].state is JobState.SUCCEEDED and results["ok"].text == "olleh"
    assert results["ok"].metadata == {"row": 7} and results["ok"].deliveries == 1
    assert results["bad"].state is JobState.FAILED and results["bad"].deliveries == 1
    assert results["bad"].error is not None and results["bad"].error.job_fault
    # Not the job's fault: retried with backoff until max_deliveries, then dead.
    assert results["flaky"].state is JobState.DEAD and results["flaky"].deliveries == 3
    assert results["flaky"].error is not None and results["flaky"].error.type == "EngineDiedError"
    history = check_history(rig.client, batch, receipts, QUEUE)
    assert history.count(JobState.DEAD) == 1
    dead = rig.client.redis.xrange(rig.client.keys.queue(QUEUE).dead)
    assert [fields[b"job"] for _, fields in dead] == [b"flaky"]


def test_a_poison_job_does_not_hold_up_the_others(rig: QueueRig) -> None:
    rig.start_server()
    batch = rig.client.new_batch()
    receipts = batch.submit_many(
        [spec("poison", "transient"), *(spec(f"j{i}") for i in range(50))]
    )
    states = {r.job_id: r.state for r in batch.results(block_s=0.2)}
    assert states.pop("poison") is JobState.DEAD
    assert set(states.values()) == {JobState.SUCCEEDED} and len(states) == 50
    check_history(rig.client, batch, receipts, QUEUE)


def test_a_running_job_is_cancelled_in_its_runner(rig: QueueRig) -> None:
    rig.start_server()
    rig.client.submit(spec("long", "sleep:60"))
    wait_for(lambda: rig.client.status("long").state is JobState.RUNNING, "the job runs")
    assert rig.client.cancel("long") is JobState.RUNNING
    result = rig.client.wait("long", timeout_s=30)
    assert result.state is JobState.CANCELLED
    assert rig.runner.cancelled == ["long"]
    assert rig.client.cancel("long") is JobState.CANCELLED  # a no-op now


def test_a_job_for_a_queue_nobody_serves_waits_and_status_says_so(rig: QueueRig) -> None:
    rig.client.submit(JobSpec("lonely", "other-model", "hello"))
    status = rig.client.queue_status("other-model")
    assert not status.served and status.unfinished == 1 and status.queued_per_lane == (0, 1, 0)
    rig.start_server()
    rig.client.submit(spec("served"))
    assert rig.client.wait("served", timeout_s=30).state is JobState.SUCCEEDED
    assert rig.client.status("lonely").state is JobState.QUEUED
    assert rig.client.queue_status(QUEUE).served


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"\xc1 not msgpack at all", "msgpack"),
        (msgpack.packb([1, 2, 3]), "map"),
        (msgpack.packb({"v": 2, "job_id": "x", "queue": QUEUE, "prompt": "p"}), "v"),
        (msgpack.packb({"v": 1, "job_id": "x", "queue": QUEUE, "prompt": 5}), "prompt"),
        (msgpack.packb({"v": 1, "job_id": "x", "queue": QUEUE, "prompt": "p", "prio": 1}),
         "prio"),
        (msgpack.packb({"v": 1, "job_id": "x", "queue": QUEUE, "prompt": "p" * (2 << 20)}),
         "prompt"),
        (msgpack.packb({"v": 1, "job_id": "someone-else", "queue": QUEUE, "prompt": "p"}),
         "job_id"),
        (msgpack.packb({"v": 1, "job_id": "x", "queue": "elsewhere", "prompt": "p"}), "queue"),
    ],
)
def test_malformed_payloads_written_into_redis_fail_their_job_alone(
    rig: QueueRig, payload: bytes, field: str
) -> None:
    """A payload that skipped the client's checks (another language, a hand-written FCALL)
    is refused on claim: the job fails, typed, with the field named; the server goes on."""
    rig.start_server()
    rig.client.redis.fcall("vlmq_submit", 1, rig.client.keys.queue(QUEUE).base, "x", "1", payload)
    result = rig.client.wait("x", timeout_s=30)
    assert result.state is JobState.FAILED and result.error is not None
    assert result.error.job_fault and result.error.type in ("InvalidPayloadError",
                                                            "InvalidRequestError")
    assert field in result.error.message
    rig.client.submit(spec("after"))
    assert rig.client.wait("after", timeout_s=30).state is JobState.SUCCEEDED
    assert rig.servers[0].server.counters.invalid_payloads == 1


def test_a_drain_hands_back_what_it_cannot_finish(rig: QueueRig) -> None:
    server = rig.start_server(drain_grace_s=0.5)
    rig.client.submit_many([spec("quick", "sleep:0.1"), spec("slow", "sleep:60")])
    wait_for(lambda: rig.client.status("slow").state is JobState.RUNNING, "slow runs")
    server.stop()
    assert rig.client.status("quick").state is JobState.SUCCEEDED  # finished in the grace
    status = rig.client.status("slow")
    # Handed back at once (not left for its lease), and the drain cost it no delivery.
    assert status.state is JobState.QUEUED and status.deliveries == 0
    assert "released by" in status.history[-1]
    rig.start_server(runner=ScriptedRunner(capacity=8, max_sleep_s=0.1))
    assert rig.client.wait("slow", timeout_s=120).deliveries == 1


def test_two_servers_share_one_queue(rig: QueueRig) -> None:
    first, second = ScriptedRunner(capacity=4), ScriptedRunner(capacity=4)
    rig.start_server(runner=first)
    rig.start_server(runner=second)
    batch = rig.client.new_batch()
    receipts = batch.submit_many(spec(f"j{i}", "sleep:0.05") for i in range(40))
    assert {r.state for r in batch.results(block_s=0.2)} == {JobState.SUCCEEDED}
    assert first.started and second.started
    assert len(first.started) + len(second.started) == 40
    check_history(rig.client, batch, receipts, QUEUE)


def test_the_server_comes_back_after_its_connection_is_killed(rig: QueueRig) -> None:
    rig.start_server()
    rig.client.submit(spec("before"))
    rig.client.wait("before", timeout_s=30)
    # Every connection of the server, its blocking read among them.
    admin = rig.redis_server.client()
    killed = admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert killed >= 2
    rig.client.submit(spec("after"))
    assert rig.client.wait("after", timeout_s=60).state is JobState.SUCCEEDED


def test_no_accepted_job_is_lost_when_redis_restarts_under_load(rig: QueueRig) -> None:
    """Append-only with an fsync per write (the fixture's redis-server): a kill -9 of Redis
    loses nothing it acknowledged."""
    rig.start_server()
    batch = rig.client.new_batch()
    receipts = batch.submit_many(spec(f"j{i}", "sleep:0.02") for i in range(200))
    wait_for(lambda: batch.counts().succeeded >= 20, "some jobs done")
    rig.redis_server.restart()
    receipts += batch.submit_many(spec(f"k{i}") for i in range(50))
    wait_for(lambda: batch.counts().done, "every job done", timeout_s=120)
    history = check_history(rig.client, batch, receipts, QUEUE)
    assert history.count(JobState.SUCCEEDED) == 250


def test_submitting_the_same_id_twice_runs_it_once(rig: QueueRig) -> None:
    rig.start_server()
    first = rig.client.submit(spec("once", "sleep:0.2"))
    second = rig.client.submit(spec("once", "a different prompt"))
    assert first.created and not second.created and second.job_id == "once"
    assert rig.client.wait("once", timeout_s=30).text == "2.0:peels"
    assert rig.runner.started == ["once"]


def test_encode_job_is_what_the_server_reads(rig: QueueRig) -> None:
    """The bytes a client writes are the bytes the server decodes: no second encoding."""
    rig.start_server()
    payload = encode_job(spec("raw", "hello raw"))
    rig.client.redis.fcall("vlmq_submit", 1, rig.client.keys.queue(QUEUE).base, "raw", "1",
                           payload)
    assert rig.client.wait("raw", timeout_s=30).text == "war olleh"


def test_a_server_that_lost_a_lease_abandons_the_job_and_reports_nothing(rig: QueueRig) -> None:
    """Another claim took the job (as after a pause past the lease): the next renewal says
    `lost`; the server cancels its run and writes nothing, not even a refused write."""
    runner = ScriptedRunner(capacity=1)  # full while it runs the job: it claims no more
    server = rig.start_server(runner, renew_every_s=0.3)
    rig.client.submit(spec("taken", "sleep:60"))
    wait_for(lambda: rig.client.status("taken").state is JobState.RUNNING, "it runs")
    keys = rig.client.keys.queue(QUEUE)
    rig.client.redis.zadd(keys.leases, {"taken": 0})  # its lease ends now
    assert rig.client.redis.fcall("vlmq_reap", 1, keys.base, "10") == [1, 0]
    reply = rig.client.redis.fcall("vlmq_claim", 1, keys.base, "someone-else", "1", "60000")
    assert reply[1] == b"taken"
    wait_for(lambda: server.server.counters.leases_lost == 1, "the renewal finds it lost")
    wait_for(lambda: runner.cancelled == ["taken"], "its run cancelled")
    assert rig.client.redis.hget(keys.base, "stale_refused") is None
    assert server.server.counters.stale_refused == 0 and server.server.held == 0
    assert rig.client.status("taken").state is JobState.RUNNING  # the other claim's now
