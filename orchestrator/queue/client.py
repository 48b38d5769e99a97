"""The client SDK: submit jobs, follow them, read their results, cancel them.

Importable without torch, ray or transformers: it speaks only Redis and the msgpack schema.
Every call is one Redis Function call or a read; `submit_many` pipelines its calls. Results of
a batch come from the batch's event stream (`XREAD BLOCK`), not from polling each job.

    client = Client("redis://127.0.0.1:6379/0")
    batch = client.new_batch()
    batch.submit_many(JobSpec(f"q{i}", "default", "Describe <image>", (image,)) for i in ...)
    for result in batch.results():
        print(result.job_id, result.state, result.text)
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from orchestrator.queue.errors import JobTimeoutError, NoSuchJobError, refusal_from_reply
from orchestrator.queue.library import ensure_library
from orchestrator.queue.schema import (
    JobResult,
    JobSpec,
    ResultError,
    ResultTimings,
    decode_result,
    encode_job,
)
from orchestrator.queue.server_load import PublishedLoad, decode_server_load
from orchestrator.queue.states import JobState
from orchestrator.redis_connection import RedisSettings
from orchestrator.redis_keys import CONSUMER_GROUP, RedisKeys, check_name

NUM_LANES = 3
# Fields of the queue's hash that are not counters: the backlog and the Lua's lane turn, and
# the settings a server writes there (`QueueServer._prepare`).
_NOT_COUNTERS = frozenset({"open", "turn", "max_backlog", "max_payload_bytes"})
# Live servers are those heard from this recently (they renew and claim far more often).
SERVER_SEEN_S = 10.0
# A bound on every reply, so an unanswering Redis fails a call instead of hanging it (the TLS
# handshake too). Longer than any blocking read the client makes (`Batch.results(block_s)`).
SOCKET_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a submission got: the job's ID and state; `created` is False for a repeat."""

    job_id: str
    created: bool
    state: JobState


@dataclass(frozen=True, slots=True)
class JobStatus:
    job_id: str
    queue: str
    state: JobState
    priority: int
    deliveries: int  # claims so far, counted by vlmq (a server that died still counts)
    created_ms: int
    finished_ms: int | None
    history: tuple[str, ...]  # "<ms> <event>", oldest first (the newest 2 KiB are kept)


@dataclass(frozen=True, slots=True)
class BatchCounts:
    total: int
    open: int  # not yet in a final state
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    dead: int

    @property
    def done(self) -> bool:
        return self.total > 0 and self.open == 0


@dataclass(frozen=True, slots=True)
class QueueStatus:
    queue: str
    queued_per_lane: tuple[int, ...]  # entries not yet read by any server, lane 0 first
    lag_per_lane: tuple[int | None, ...]  # as XINFO GROUPS reports it (autoscalers read it)
    running: int
    retrying: int  # waiting out a backoff before their next delivery
    unfinished: int  # the backlog the cap counts: queued, retrying and running
    servers: tuple[str, ...]  # consumers heard from in the last SERVER_SEEN_S
    counters: dict[str, int]  # submitted, claimed, succeeded, failed, ... since the start

    @property
    def served(self) -> bool:
        return bool(self.servers)


class Client:
    def __init__(
        self,
        redis_url: str | RedisSettings,  # a URL, or settings with a password and TLS files
        *,
        namespace: str = "vlmq",
        result_ttl_s: float = 24 * 3600,
        max_deliveries: int = 3,
        load_library: bool = True,
    ) -> None:
        self.keys = RedisKeys(check_name("namespace", namespace))
        self.redis = RedisSettings.of(redis_url).sync_client(socket_timeout=SOCKET_TIMEOUT_S)
        self.result_ttl_ms = round(result_ttl_s * 1000)
        self.max_deliveries = max_deliveries
        if load_library:
            ensure_library(self.redis)

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # Submitting

    def submit(self, spec: JobSpec, *, batch: str | None = None) -> Receipt:
        """Submit one job; a job ID already known returns that job's receipt, unchanged."""
        return self.submit_many([spec], batch=batch)[0]

    def submit_many(
        self, specs: Iterable[JobSpec], *, batch: str | None = None, chunk: int = 500
    ) -> list[Receipt]:
        """Submit jobs, `chunk` to a round trip per queue; receipts in the order given.

        Each job is checked (`encode_job`) before its chunk is sent. A refusal by Redis (the
        queue is full, a payload is too large) raises once its chunk is done, and no later
        chunk is sent: the error's `accepted` holds the receipts of the jobs taken, and
        `refused` the (job ID, reason) of each refused one.
        """
        receipts: list[Receipt] = []
        pending: list[JobSpec] = []
        for spec in specs:
            pending.append(spec)
            if len(pending) >= chunk:
                self._submit_chunk(pending, batch, receipts)
                pending = []
        if pending:
            self._submit_chunk(pending, batch, receipts)
        return receipts

    def _submit_chunk(
        self,
        specs: Sequence[JobSpec],
        batch: str | None,
        receipts: list[Receipt],
        progress: int | None = None,
    ) -> None:
        options: list[str] = ["result_ttl_ms", str(self.result_ttl_ms),
                              "max_deliveries", str(self.max_deliveries)]
        if batch is not None:
            options += ["batch", batch]
        if progress is not None:
            options += ["progress", str(progress)]
        by_queue: dict[str, list[str | bytes | int]] = {}
        order: list[str] = []
        for spec in specs:
            args = by_queue.setdefault(spec.queue, [len(options), *options])
            args += [spec.job_id, str(int(spec.priority)), encode_job(spec)]
            order.append(spec.queue)
        pipe = self.redis.pipeline(transaction=False)
        for queue, args in by_queue.items():
            pipe.fcall("vlmq_submit_many", 1, self.keys.queue(queue).base, *args)
        replies = {
            queue: iter(reply)
            for queue, reply in zip(by_queue, pipe.execute(raise_on_error=False), strict=True)
        }
        for reply in replies.values():
            if isinstance(reply, redis.ResponseError):
                raise refusal_from_reply(str(reply))
        refused: list[tuple[str, str]] = []
        for queue in order:
            status, job_id, state = (_text(part) for part in next(replies[queue]))
            if status == "refused":
                refused.append((job_id, state))
            else:
                receipts.append(Receipt(job_id, status == "created", JobState(state)))
        if refused:
            refusal = refusal_from_reply(refused[0][1])
            refusal.accepted = list(receipts)
            refusal.refused = refused
            raise refusal

    def new_batch(self, batch_id: str | None = None) -> Batch:
        return Batch(self, batch_id or uuid.uuid4().hex)

    def batch(self, batch_id: str) -> Batch:
        return Batch(self, batch_id)

    # Following

    def status(self, job_id: str) -> JobStatus:
        fields = self.redis.hmget(
            self.keys.job(job_id), "queue", "state", "priority", "deliveries", "created_ms",
            "finished_ms", "history",
        )
        if fields[1] is None:
            raise NoSuchJobError(f"no job {job_id} (never submitted, or its result expired)")
        queue, state, priority, deliveries, created, finished, history = (
            _text(value) if value is not None else None for value in fields
        )
        return JobStatus(
            job_id=job_id,
            queue=queue or "",
            state=JobState(state or ""),
            priority=int(priority or 1),
            deliveries=int(deliveries or 0),
            created_ms=int(created or 0),
            finished_ms=int(finished) if finished else None,
            history=tuple(line for line in (history or "").splitlines() if line),
        )

    def result(self, job_id: str) -> JobResult | None:
        """The job's result once it is in a final state; None while it is not."""
        return self._results([job_id])[0]

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        """Block until the job is in a final state; its result.

        Polls the job's state with a backoff from 2 ms to 200 ms; a batch's `results()` reads
        its event stream instead.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 0.002
        while (result := self.result(job_id)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {job_id} did not finish within {timeout_s} s")
            time.sleep(delay if deadline is None else min(delay, deadline - time.monotonic()))
            delay = min(delay * 2, 0.2)
        return result

    def cancel(self, job_id: str, reason: str = "cancelled") -> JobState:
        """Cancel a job: a queued one ends `cancelled` now; a running one is aborted by its
        server (it answers RUNNING, and ends CANCELLED unless it finished first); a finished
        one keeps its state. `reason` (1 to 32 of [a-z_]) is kept as its `cancel_reason`."""
        try:
            reply = self.redis.fcall("vlmq_cancel", 1, self.keys.job(job_id), reason)
        except redis.ResponseError as error:
            raise refusal_from_reply(str(error)) from None
        return JobState(_text(reply[0]))

    def queue_status(self, queue: str) -> QueueStatus:
        keys = self.keys.queue(queue)
        pipe = self.redis.pipeline(transaction=False)
        for lane in range(NUM_LANES):
            pipe.exists(keys.lane(lane))
        pipe.zcard(keys.leases)
        pipe.zcard(keys.delayed)
        pipe.zrangebyscore(keys.servers, time.time() * 1000 - SERVER_SEEN_S * 1000, "+inf")
        pipe.hgetall(keys.base)
        *exists, running, retrying, servers, counters = pipe.execute()
        lags: list[int | None] = []
        for lane, present in enumerate(exists):
            lag: int | None = 0
            if present:
                for group in self.redis.xinfo_groups(keys.lane(lane)):
                    if _text(group["name"]) == CONSUMER_GROUP:
                        lag = group["lag"]
            lags.append(lag)
        numbers = {_text(k): int(v) for k, v in counters.items() if _text(v).lstrip("-").isdigit()}
        return QueueStatus(
            queue=queue,
            queued_per_lane=tuple(lag or 0 for lag in lags),
            lag_per_lane=tuple(lags),
            running=int(running),
            retrying=int(retrying),
            unfinished=numbers.get("open", 0),
            servers=tuple(_text(name) for name in servers),
            counters={k: v for k, v in numbers.items() if k not in _NOT_COUNTERS},
        )

    def server_loads(self, queue: str, servers: Sequence[str]) -> list[PublishedLoad]:
        """What each of `servers` (live ones, from `queue_status`) published of its load."""
        keys = self.keys.queue(queue)
        raw = self.redis.mget([keys.server_load(name) for name in servers]) if servers else []
        loads = []
        for name, value in zip(servers, raw, strict=True):
            if value is None:
                loads.append(PublishedLoad(name, None, "nothing published"))
                continue
            try:
                loads.append(PublishedLoad(name, decode_server_load(value)))
            except ValueError as error:
                loads.append(PublishedLoad(name, None, f"unreadable: {error}"))
        return loads

    def _results(self, job_ids: Sequence[str]) -> list[JobResult | None]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), "state", "result", "deliveries")
        answers: list[JobResult | None] = []
        for job_id, (state, result, deliveries) in zip(job_ids, pipe.execute(), strict=True):
            if state is None:
                raise NoSuchJobError(f"no job {job_id} (never submitted, or its result expired)")
            final = JobState(_text(state))
            if not final.is_terminal:
                answers.append(None)
            elif result:
                decoded = decode_result(result)
                # A retried job that went dead carries its last failure's result.
                answers.append(
                    decoded if decoded.state is final else dataclasses.replace(decoded, state=final)
                )
            else:
                history: Any = self.redis.hget(self.keys.job(job_id), "history")
                answers.append(_result_without_run(job_id, final, deliveries, history))
        return answers


class Batch:
    """Jobs submitted together, followed together: counts per state, results as they finish."""

    def __init__(self, client: Client, batch_id: str) -> None:
        self.client = client
        self.id = batch_id
        self.keys = client.keys.batch(batch_id)

    def submit(self, spec: JobSpec) -> Receipt:
        return self.client.submit(spec, batch=self.id)

    def submit_many(self, specs: Iterable[JobSpec], chunk: int = 500) -> list[Receipt]:
        return self.client.submit_many(specs, batch=self.id, chunk=chunk)

    def submit_window(self, specs: Sequence[JobSpec], next_line: int) -> list[Receipt]:
        """Submit jobs of one queue in one call that also records `next_line` as the batch's
        progress, when none was refused: a resumed submitter starts there. Refusals raise as
        from `submit_many`, and leave the progress as it was."""
        if len({spec.queue for spec in specs}) > 1:
            raise ValueError("one window goes to one queue")
        receipts: list[Receipt] = []
        self.client._submit_chunk(specs, self.id, receipts, progress=next_line)
        return receipts

    def counts(self) -> BatchCounts:
        raw = self.client.redis.hgetall(self.keys.counts)
        values = {_text(k): int(v) for k, v in raw.items()}
        return BatchCounts(**{name: values.get(name, 0) for name in BatchCounts.__slots__})

    def job_ids(self) -> list[str]:
        return [_text(job_id) for job_id in self.client.redis.lrange(self.keys.jobs, 0, -1)]

    def results(self, block_s: float = 1.0) -> Iterator[JobResult]:
        """Each job's result as it reaches a final state, until every submitted job has.

        Reads the batch's event stream from its start, so results that came before the call
        come first. Ends once the batch has no unfinished job and every event is read.
        """
        if not 0 < block_s < SOCKET_TIMEOUT_S:
            # 0 would block for ever (XREAD BLOCK 0); past the socket timeout, a quiet batch
            # would read as a dead Redis.
            raise ValueError(f"block_s must be in (0, {SOCKET_TIMEOUT_S:g}), got {block_s}")
        last = "0-0"
        block_ms = round(block_s * 1000)
        while True:
            events = self._events_after(last, block_ms)
            if events:
                last = _text(events[-1][0])
                job_ids = [_text(fields[b"job"]) for _, fields in events]
                for result in self.client._results(job_ids):
                    if result is not None:
                        yield result
            # Done once nothing is unfinished and no event is left unread (read again without
            # blocking, to close the race with an event written before the count).
            if self.counts().open == 0 and not self._events_after(last, None):
                return

    def _events_after(self, last: str, block_ms: int | None) -> list[Any]:
        reply: Any = self.client.redis.xread(
            {self.keys.events: last}, count=500, block=block_ms
        )
        return list(reply[0][1]) if reply else []

    def wait(self, timeout_s: float | None = None) -> BatchCounts:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not (counts := self.counts()).done:
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"batch {self.id} did not finish within {timeout_s} s")
            time.sleep(0.05)
        return counts

    def cancel(self) -> int:
        """Cancel the batch: it takes no more jobs, and every unfinished job is cancelled
        (finished ones keep their results). How many were still unfinished."""
        return self.close("cancelled")

    def close(self, reason: str, chunk: int = 2000) -> int:
        """Close the batch with `reason` ('cancelled', or 'expired' once its completion
        window ended): its unfinished jobs end `cancelled` with the reason `batch_<reason>`,
        `chunk` jobs to a call so Redis stays responsive. How many were still unfinished."""
        unfinished = 0
        while True:
            try:
                done, _, cancelled, told = self.client.redis.fcall(
                    "vlmq_close_batch", 1, self.keys.base, reason, str(chunk)
                )
            except redis.ResponseError as error:
                raise refusal_from_reply(str(error)) from None
            unfinished += int(cancelled) + int(told)
            if int(done):
                return unfinished


def _result_without_run(
    job_id: str, state: JobState, deliveries: bytes | None, history: bytes | None
) -> JobResult:
    """The result of a job that ended without a server writing one (cancelled while queued,
    dead before it ran): its state, and the reason from its history."""
    last = (_text(history).strip().splitlines() or [""])[-1] if history else ""
    reason = last.split(" ", 1)[1] if " " in last else state.value
    error_type = "JobCancelledError" if state is JobState.CANCELLED else "DeadLetterError"
    return JobResult(
        job_id=job_id,
        state=state,
        text=None,
        finish_reason=None,
        prompt_tokens=0,
        completion_tokens=0,
        timings=ResultTimings(0.0, 0.0, 0.0, 0.0),
        deliveries=int(deliveries or 0),
        metadata={},
        error=ResultError(error_type, reason, job_fault=False),
    )


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
