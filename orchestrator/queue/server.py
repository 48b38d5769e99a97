"""The queue server: claims jobs from one queue as its runner has room, and writes each outcome.

One asyncio program, five loops on one event loop:
- claim: asks for as many jobs as the runner has room for (`capacity` minus those held), and
  when the queue is empty waits on the queue's wake-up list (`BLPOP`, bounded) instead of
  polling;
- finish: writes outcomes in batches, each fenced by its claim's token; a write that fails on
  a Redis outage is kept and tried again, never dropped;
- renew: extends every held lease; a job whose lease was lost (another server took it) is
  cancelled here and never reported; one whose cancel was asked is cancelled in the runner;
- reap: requeues jobs whose lease ended and publishes retries that are due; samples the
  queue's depth for its metrics and writes this server's load for `vlmq status`;
- cancel: a Pub/Sub fast path for cancels (renew would see them within `renew_every_s`).
`stop()` (SIGTERM, SIGINT in `vlmq serve`) drains: no more claims; held jobs get
`drain_grace_s` to finish; the rest are handed back at once (`release`), not left to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from typing import Any

import redis
import redis.asyncio

from orchestrator.metrics import definitions as metrics
from orchestrator.metrics.queue_sampler import sample_queue_depth
from orchestrator.pipeline.job import JobOutcome, JobRequest
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.library import ensure_library_async
from orchestrator.queue.runner import JobRunner
from orchestrator.queue.schema import (
    JobResult,
    JobSpec,
    ResultError,
    ResultTimings,
    decode_job,
    encode_result,
)
from orchestrator.queue.server_load import LOAD_TTL_S, ServerLoad, encode_server_load
from orchestrator.queue.states import JobState
from orchestrator.redis_keys import RedisKeys
from worker.errors import InvalidRequestError

log = logging.getLogger(__name__)

# Outcomes that hand a job back rather than end it or count against it.
_CLOSED = "PipelineClosedError"
_CANCELLED = "JobCancelledError"
_MAX_RENEWALS_PER_CALL = 500
_MAX_REAPED_PER_CALL = 1000
_MAX_BATCHES_EXPIRED = 16  # batches one reap pass looks at; the next pass takes the rest


@dataclass(frozen=True, slots=True)
class Claim:
    job_id: str
    fence: str  # the fencing token: every write about this job carries it
    deliveries: int  # this claim included
    created_ms: int
    payload: bytes


@dataclass(slots=True)
class ServerCounters:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    released: int = 0
    dead: int = 0
    invalid_payloads: int = 0  # refused on claim: the job fails with InvalidPayloadError
    stale_refused: int = 0  # outcomes Redis refused: the claim was no longer the job's
    leases_lost: int = 0  # jobs given up on a renewal that found another claim
    redis_errors: int = 0  # calls that failed on a Redis outage and were tried again

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _Held:
    claim: Claim
    spec: JobSpec
    claimed_at: float  # time.time()
    lost: bool = False  # its lease went to another claim: its outcome is never written
    cancel_asked: bool = False


@dataclass(frozen=True, slots=True)
class _Finish:
    job_id: str
    fence: str
    action: str  # succeeded | failed | cancelled | retry | release
    delay_ms: int
    result: bytes
    error_type: str = ""  # of a failure, for its metric
    created_ms: int = 0  # the job's submission, for its latency metric


@dataclass(slots=True)
class _Backoff:
    """Delay before a call is tried again on a Redis outage: 50 ms doubling to 2 s."""

    delay: float = field(default=0.05)

    def reset(self) -> None:
        self.delay = 0.05

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 2.0)


class QueueServer:
    def __init__(self, config: QueueConfig, runner: JobRunner) -> None:
        self.config = config
        self.runner = runner
        self.keys = RedisKeys(config.namespace).queue(config.queue)
        self.cancel_channel = RedisKeys(config.namespace).cancel_channel
        self._namespace_keys = RedisKeys(config.namespace)
        self._load_key = self.keys.server_load(config.consumer)
        self.counters = ServerCounters()
        self._held: dict[str, _Held] = {}
        self._finishes: list[_Finish] = []
        self._stopping = asyncio.Event()
        self._closing = False  # the background loops are being stopped: they end quietly
        self._room = asyncio.Event()  # a held job finished
        self._flush = asyncio.Event()  # outcomes wait to be written
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: redis.asyncio.Redis | None = None
        self.ready = asyncio.Event()  # the library is loaded and the loops run

    @property
    def held(self) -> int:
        return len(self._held)

    def stop(self) -> None:
        """Begin draining; `run()` returns once done. Safe to call from a signal handler."""
        self._stopping.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        log.info("queue server %s: queue %r of namespace %r on Redis at %s",
                 self.config.consumer, self.config.queue, self.config.namespace,
                 self.config.redis.masked_url)
        self._redis = self.config.redis.async_client(
            socket_timeout=10.0, socket_connect_timeout=5.0
        )
        blocking = self.config.redis.async_client(
            socket_timeout=self.config.idle_wait_s + 5.0,
            socket_connect_timeout=5.0,
        )
        try:
            await self._retrying(self._prepare)
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                # Before its first claim lists it among the queue's servers.
                await self._publish_load()
            self.ready.set()
            loops = [
                asyncio.create_task(self._renew_loop()),
                asyncio.create_task(self._reap_loop()),
                asyncio.create_task(self._cancel_loop()),
            ]
            finisher = asyncio.create_task(self._finish_loop())
            await self._claim_loop(blocking)
            await self._drain()
            self._flush.set()
            await finisher
            self._closing = True
            await _cancel_until_done(loops)
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                # It holds and runs nothing now, and is no longer one of the queue's servers
                # (which `vlmq status` lists and each scaler divides the backlog by).
                pipe = self._redis.pipeline(transaction=False)
                pipe.delete(self._load_key)
                pipe.zrem(self.keys.servers, self.config.consumer)
                await pipe.execute()
        finally:
            await blocking.aclose()
            await self._redis.aclose()

    async def _prepare(self) -> None:
        assert self._redis is not None
        await ensure_library_async(self._redis)
        await self._redis.hset(
            self.keys.base,
            mapping={
                "max_backlog": self.config.max_backlog,
                "max_payload_bytes": self.config.max_payload_bytes,
            },
        )

    # Claiming

    async def _claim_loop(self, blocking: redis.asyncio.Redis) -> None:
        assert self._redis is not None
        backoff = _Backoff()
        while not self._stopping.is_set():
            free = self.runner.capacity - len(self._held)
            if free <= 0:
                self._room.clear()
                await _first_of(self._room.wait(), self._stopping.wait())
                continue
            try:
                reply: Any = await self._redis.fcall(
                    "vlmq_claim", 1, self.keys.base, self.config.consumer, free,
                    self.config.lease_ms,
                )
                more = reply[0] == 1
                claims = _claims(reply[1:])
                for claim in claims:
                    self._start(claim)
                if not claims and not more:
                    await blocking.blpop([self.keys.wake], timeout=self.config.idle_wait_s)
                backoff.reset()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                self._outage("claim", error)
                await backoff.wait()

    def _start(self, claim: Claim) -> None:
        self.counters.claimed += 1
        queue = self.config.queue
        metrics.JOBS_CLAIMED.inc(queue=queue)
        metrics.REQUEST_QUEUE_TIME.observe(time.time() - claim.created_ms / 1000, queue=queue)
        if claim.job_id in self._held:
            # This server still runs an older claim of the job (its lease was lost): let the
            # new claim wait out a short delay rather than run the job twice here.
            self._queue_finish(claim, "retry", self._retry_result(claim, None, "held"), 1000)
            return
        try:
            spec = decode_job(claim.payload)
            if spec.job_id != claim.job_id:
                raise InvalidRequestError(
                    f"job_id: the payload says {spec.job_id!r}, its job hash {claim.job_id!r}"
                )
            if spec.queue != self.config.queue:
                raise InvalidRequestError(
                    f"queue: the payload says {spec.queue!r}, but it was queued on "
                    f"{self.config.queue!r}"
                )
            request = JobRequest(spec.job_id, spec.prompt, spec.images, spec.sampling)
        except InvalidRequestError as error:
            # The job's own fault, found by this server's check of what it claimed.
            self.counters.invalid_payloads += 1
            try:
                encoded = encode_result(
                    _error_result(claim, None, type(error).__name__, str(error), True)
                )
            except InvalidRequestError:
                encoded = b""  # its very ID is not one a result may carry: no result then
            self._queue_finish(claim, "failed", encoded, error_type=type(error).__name__)
            return
        held = _Held(claim, spec, time.time())
        try:
            future = self.runner.submit(request)
        except Exception:  # the runner cannot take work now (closing): hand the job back
            log.exception("runner refused job %s; handing it back", claim.job_id)
            self._queue_finish(claim, "release", b"")
            return
        self._held[claim.job_id] = held
        loop = self._loop
        assert loop is not None

        def finished(done: Future[JobOutcome]) -> None:
            # Runs on the runner's thread (or here, for a future already done).
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to write to
                loop.call_soon_threadsafe(self._finished, held, done)

        future.add_done_callback(finished)

    def _finished(self, held: _Held, done: Future[JobOutcome]) -> None:
        if self._held.get(held.claim.job_id) is held:
            del self._held[held.claim.job_id]
        self._room.set()
        if held.lost:
            return  # another claim owns the job now: this one's outcome must not be written
        try:
            outcome = done.result()
        except Exception as error:  # a runner that broke its promise: retry the job
            log.exception("runner failed on job %s", held.claim.job_id)
            self._queue_finish(
                held.claim, "retry", self._retry_result(held.claim, held, repr(error)),
                self._retry_delay_ms(held.claim.deliveries),
            )
            return
        self._write_outcome(held, outcome)

    def _write_outcome(self, held: _Held, outcome: JobOutcome) -> None:
        claim = held.claim
        failure = outcome.failure
        if outcome.result is not None:
            generated = outcome.result
            result = JobResult(
                job_id=claim.job_id,
                state=JobState.SUCCEEDED,
                text=generated.text,
                finish_reason=generated.finish_reason.value,
                prompt_tokens=generated.num_prompt_tokens,
                completion_tokens=generated.num_completion_tokens,
                timings=self._timings(held, generated.timings.prefill_s,
                                      generated.timings.decode_s),
                deliveries=claim.deliveries,
                metadata=dict(held.spec.metadata),
                error=None,
            )
            self._queue_finish(claim, "succeeded", encode_result(result))
        elif failure is None:
            raise AssertionError("a JobOutcome has a result or a failure")
        elif failure.error_type == _CANCELLED and held.cancel_asked:
            result = _error_result(claim, held, failure.error_type, failure.message, False)
            self._queue_finish(claim, "cancelled", encode_result(result))
        elif failure.error_type in (_CLOSED, _CANCELLED):
            self._queue_finish(claim, "release", b"")  # not the job's doing: hand it back
        elif failure.is_job_error:
            result = _error_result(claim, held, failure.error_type, failure.message, True)
            self._queue_finish(claim, "failed", encode_result(result),
                               error_type=failure.error_type)
        else:
            result = _error_result(claim, held, failure.error_type, failure.message, False)
            self._queue_finish(
                claim, "retry", encode_result(result), self._retry_delay_ms(claim.deliveries)
            )

    def _timings(self, held: _Held | None, prefill_s: float, decode_s: float) -> ResultTimings:
        now = time.time()
        claimed_at = held.claimed_at if held is not None else now
        created = held.claim.created_ms / 1000 if held is not None else now
        return ResultTimings(
            queue_s=max(0.0, claimed_at - created),
            run_s=max(0.0, now - claimed_at),
            prefill_s=prefill_s,
            decode_s=decode_s,
        )

    def _retry_result(self, claim: Claim, held: _Held | None, why: str) -> bytes:
        return encode_result(_error_result(claim, held, "RetryError", why, False))

    def _retry_delay_ms(self, deliveries: int) -> int:
        # Exponential backoff with jitter: half the step fixed, half drawn, so servers that
        # failed together do not come back together.
        step = min(self.config.retry_cap_s, self.config.retry_base_s * 2.0 ** (deliveries - 1))
        return round(1000 * (step / 2 + random.uniform(0, step / 2)))

    # Writing outcomes

    def _queue_finish(
        self, claim: Claim, action: str, result: bytes, delay_ms: int = 0, error_type: str = ""
    ) -> None:
        self._finishes.append(_Finish(claim.job_id, claim.fence, action, delay_ms, result,
                                      error_type, claim.created_ms))
        self._flush.set()

    async def _finish_loop(self) -> None:
        assert self._redis is not None
        backoff = _Backoff()
        while True:
            await self._flush.wait()
            self._flush.clear()
            while self._finishes:
                chunk = self._finishes[: self.config.max_finishes_per_call]
                args: list[str | int | bytes] = []
                for item in chunk:
                    args += [item.job_id, item.fence, item.action, item.delay_ms, item.result]
                try:
                    answers: Any = await self._redis.fcall(
                        "vlmq_finish", 1, self.keys.base, *args
                    )
                except (redis.ConnectionError, redis.TimeoutError) as error:
                    self._outage("finish", error)
                    await backoff.wait()
                    continue
                backoff.reset()
                del self._finishes[: len(chunk)]
                for item, answer in zip(chunk, answers, strict=True):
                    self._count(item, answer.decode())
            if self._stopping.is_set() and not self._held:
                return

    def _count(self, item: _Finish, answer: str) -> None:
        self._export(item, answer)
        if answer == "stale":
            self.counters.stale_refused += 1
            log.warning("job %s: outcome refused, its claim is stale", item.job_id)
        elif answer == "dead":
            self.counters.dead += 1
        elif item.action == "retry":
            self.counters.retried += 1
        elif item.action == "release":
            self.counters.released += 1
        elif answer in ("succeeded", "failed", "cancelled"):
            setattr(self.counters, answer, getattr(self.counters, answer) + 1)

    def _export(self, item: _Finish, answer: str) -> None:
        queue = self.config.queue
        if answer == "stale":
            metrics.STALE_COMPLETIONS_REFUSED.inc(queue=queue)
        elif answer == "dead":
            metrics.JOBS_DEAD_LETTERED.inc(queue=queue)
        elif item.action == "retry":
            metrics.JOBS_RETRIED.inc(queue=queue)
        elif item.action == "release":
            metrics.JOBS_RELEASED.inc(queue=queue)
        elif answer == "failed":
            metrics.JOBS_FAILED.inc(queue=queue, error_type=item.error_type or "unknown")
        elif answer in ("succeeded", "cancelled"):
            metrics.JOBS_COMPLETED.inc(queue=queue, state=answer)
            if answer == "succeeded":
                metrics.E2E_REQUEST_LATENCY.observe(
                    time.time() - item.created_ms / 1000, queue=queue
                )

    # Leases

    async def _renew_loop(self) -> None:
        assert self._redis is not None
        while not self._closing:
            await asyncio.sleep(self.config.renew_every_s)
            held = [h for h in self._held.values() if not h.lost]
            for start in range(0, len(held), _MAX_RENEWALS_PER_CALL):
                chunk = held[start : start + _MAX_RENEWALS_PER_CALL]
                args: list[str | int] = []
                for h in chunk:
                    args += [h.claim.job_id, h.claim.fence]
                try:
                    answers: Any = await self._redis.fcall(
                        "vlmq_renew", 1, self.keys.base, self.config.consumer,
                        self.config.lease_ms, *args,
                    )
                except (redis.ConnectionError, redis.TimeoutError) as error:
                    if self._closing:
                        return
                    self._outage("renew", error)
                    break  # the next round tries again; the lease covers two misses
                for h, answer in zip(chunk, answers, strict=True):
                    if answer == b"lost":
                        h.lost = True
                        self.counters.leases_lost += 1
                        log.warning("job %s: lease lost; abandoning it", h.claim.job_id)
                        self.runner.cancel(h.claim.job_id)
                    elif answer == b"cancel" and not h.cancel_asked:
                        self._cancel_held(h)

    def _cancel_held(self, held: _Held) -> None:
        held.cancel_asked = True
        self.runner.cancel(held.claim.job_id)

    async def _cancel_loop(self) -> None:
        assert self._redis is not None
        backoff = _Backoff()
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.cancel_channel)
                backoff.reset()
                async for message in pubsub.listen():
                    job_id = message["data"].decode()
                    held = self._held.get(job_id)
                    if held is not None and not held.cancel_asked:
                        self._cancel_held(held)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if self._closing:
                    return
                self._outage("cancel listener", error)
                await backoff.wait()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _reap_loop(self) -> None:
        assert self._redis is not None
        while not self._closing:
            await asyncio.sleep(self.config.reap_every_s)
            try:
                await self._redis.fcall(
                    "vlmq_reap", 1, self.keys.base, _MAX_REAPED_PER_CALL
                )
                await self._expire_batches()
                metrics.JOBS_HELD.set(len(self._held), queue=self.config.queue)
                await sample_queue_depth(self._redis, self.keys, self.config.queue)
                await self._publish_load()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if self._closing:
                    return
                self._outage("reap", error)

    async def _publish_load(self) -> None:
        """Write what this server holds and its actors run, for `vlmq status` (a report that
        expires with the server; see server_load.py)."""
        assert self._redis is not None
        try:
            actors = await asyncio.to_thread(self.runner.actor_loads)
        except Exception:  # the runner is closing, or slow: the next pass tries again
            log.debug("no actor loads this pass", exc_info=True)
            return
        load = ServerLoad(self.config.consumer, len(self._held), self.runner.capacity,
                          round(time.time() * 1000), actors)
        await self._redis.set(self._load_key, encode_server_load(load),
                              px=round(LOAD_TTL_S * 1000))

    async def _expire_batches(self) -> None:
        """Close the batches whose completion window ended: their unfinished jobs end
        `cancelled` (reason batch_expired). Any server of the namespace may do it; Redis's
        clock decides whether a window ended (a batch not yet due answers NOT_DUE)."""
        assert self._redis is not None
        keys = self._namespace_keys
        due = await self._redis.zrangebyscore(
            keys.batch_deadlines, "-inf", time.time() * 1000, start=0, num=_MAX_BATCHES_EXPIRED
        )
        for batch in due:
            batch_id = batch.decode() if isinstance(batch, bytes) else str(batch)
            while True:
                try:
                    done, *_ = await self._redis.fcall(
                        "vlmq_close_batch", 1, keys.batch(batch_id).base, "expired",
                        _MAX_REAPED_PER_CALL,
                    )
                except redis.ResponseError as error:
                    if not str(error).startswith("NOT_DUE"):
                        log.warning("could not expire batch %s: %s", batch_id, error)
                    break
                if int(done):
                    log.info("batch %s expired: its completion window ended", batch_id)
                    break

    # Draining

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_grace_s
        if self._held:
            log.info("draining: %d jobs in flight, %.0f s grace", len(self._held),
                     self.config.drain_grace_s)
        while self._held and time.monotonic() < deadline:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), deadline - time.monotonic())
        for held in list(self._held.values()):
            # Handed back at once, not left for its lease to expire; its run is abandoned.
            held.lost = True
            del self._held[held.claim.job_id]
            self._queue_finish(held.claim, "release", b"")
            self.runner.cancel(held.claim.job_id)

    def _outage(self, what: str, error: Exception) -> None:
        self.counters.redis_errors += 1
        log.warning("%s: Redis at %s unreachable (%s); trying again", what,
                    self.config.redis.masked_url, error)

    async def _retrying(self, call: Callable[[], Awaitable[None]]) -> None:
        """`call` until Redis answers it: a server may start before its Redis."""
        backoff = _Backoff()
        while True:
            try:
                await call()
                return
            except redis.AuthenticationError as error:
                # A wrong password or a disabled user: waiting would not mend it.
                raise redis.AuthenticationError(
                    self.config.redis.describe_failure(error)
                ) from error
            except (redis.ConnectionError, redis.TimeoutError) as error:
                self._outage("start", error)
                await backoff.wait()


def _claims(flat: list[object]) -> list[Claim]:
    claims = []
    for i in range(0, len(flat), 5):
        job_id, fence, deliveries, created, payload = flat[i : i + 5]
        assert isinstance(job_id, bytes) and isinstance(fence, bytes)
        assert isinstance(payload, bytes)
        claims.append(
            Claim(job_id.decode(), fence.decode(), int(deliveries),  # type: ignore[call-overload]
                  int(created), payload)  # type: ignore[call-overload]
        )
    return claims


def _error_result(
    claim: Claim, held: _Held | None, error_type: str, message: str, job_fault: bool
) -> JobResult:
    state = JobState.CANCELLED if error_type == _CANCELLED else JobState.FAILED
    now = time.time()
    claimed_at = held.claimed_at if held is not None else now
    return JobResult(
        job_id=claim.job_id,
        state=state,
        text=None,
        finish_reason=None,
        prompt_tokens=0,
        completion_tokens=0,
        timings=ResultTimings(
            queue_s=max(0.0, claimed_at - claim.created_ms / 1000),
            run_s=max(0.0, now - claimed_at),
            prefill_s=0.0,
            decode_s=0.0,
        ),
        deliveries=claim.deliveries,
        metadata=dict(held.spec.metadata) if held is not None else {},
        error=ResultError(error_type, message, job_fault),
    )


async def _cancel_until_done(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them to end. A cancel that lands inside a redis-py call
    can come out of it as a ConnectionError or TimeoutError, which the loops survive (a task
    then sits in its next sleep, cancelled in name only, and a plain gather waits forever):
    so each one still running is cancelled again until it ends."""
    pending = [task for task in tasks if not task.done()]
    while pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
        pending = [task for task in pending if not task.done()]
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("queue server loop failed", exc_info=task.exception())


async def _first_of(*waits: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
