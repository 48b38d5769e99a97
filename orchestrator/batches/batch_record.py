"""A batch file's record in Redis: what it was opened with, how it stands, its line errors.

The record is the batch's `info` hash (written once by `vlmq_open_batch`; closed by
`vlmq_close_batch`), its counts hash (kept by the queue's functions as jobs move), and its
`line_errors` hash (line number -> JSON), for the lines that never became jobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import redis

from orchestrator.batches.line_errors import LineError
from orchestrator.queue.client import BatchCounts, Client
from orchestrator.queue.errors import QueueError, refusal_from_reply

BatchStatus = Literal["in_progress", "completed", "cancelling", "cancelled", "expired"]

class NoSuchBatchError(QueueError, KeyError):
    """No batch has that ID: never submitted, or its record expired."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """As OpenAI's Batch object counts them, plus vlmq's ends that are neither."""

    total: int  # lines of the input file that are requests: jobs plus line errors
    completed: int  # succeeded
    failed: int  # failed, dead, and the lines that were never jobs
    cancelled: int  # cancelled (by the batch's cancel, or one by one)
    expired: int  # ended by the completion window before they ran to the end


@dataclass(frozen=True, slots=True)
class BatchInfo:
    batch_id: str
    queue: str
    input_file: str  # the file's name as submitted
    fingerprint: str  # SHA-256 of its bytes
    created_ms: int
    expires_ms: int | None  # the end of its completion window
    closed: str | None  # "cancelled" or "expired" once closed
    closed_ms: int | None
    finished_ms: int | None  # when its last job ended
    next_line: int  # every line before it is in (or a line error): a resume starts there
    counts: BatchCounts
    line_errors: int
    expired_jobs: int  # of counts.cancelled, those the window ended
    prompt_tokens: int
    completion_tokens: int

    @property
    def status(self) -> BatchStatus:
        if self.closed == "expired":
            return "expired"
        if self.closed == "cancelled":
            return "cancelling" if self.counts.open else "cancelled"
        return "in_progress" if self.counts.open else "completed"

    @property
    def request_counts(self) -> RequestCounts:
        counts = self.counts
        return RequestCounts(
            total=counts.total + self.line_errors,
            completed=counts.succeeded,
            failed=counts.failed + counts.dead + self.line_errors,
            cancelled=counts.cancelled - self.expired_jobs,
            expired=self.expired_jobs,
        )

    def as_json(self) -> dict[str, Any]:
        """The record as `vlmq status --json` prints it: OpenAI's Batch object's fields
        where they mean the same, in seconds since the epoch."""
        counts = self.request_counts
        return {
            "id": self.batch_id,
            "object": "batch",
            "status": self.status,
            "queue": self.queue,
            "input_file": self.input_file,
            "fingerprint": self.fingerprint,
            "created_at": self.created_ms // 1000,
            "expires_at": None if self.expires_ms is None else self.expires_ms // 1000,
            "completed_at": (
                self.finished_ms // 1000
                if self.finished_ms and self.status == "completed" else None
            ),
            "cancelled_at": (
                self.closed_ms // 1000 if self.closed_ms and self.closed == "cancelled" else None
            ),
            "expired_at": (
                self.closed_ms // 1000 if self.closed_ms and self.closed == "expired" else None
            ),
            "request_counts": {
                "total": counts.total,
                "completed": counts.completed,
                "failed": counts.failed,
                "cancelled": counts.cancelled,
                "expired": counts.expired,
            },
            "jobs": {
                "queued": self.counts.queued,
                "running": self.counts.running,
                "unfinished": self.counts.open,
            },
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
            "next_line": self.next_line,
        }


@dataclass(frozen=True, slots=True)
class OpenedBatch:
    created: bool  # False: the batch was known (a resumed submission)
    info: BatchInfo


def open_batch(
    client: Client,
    batch_id: str,
    *,
    queue: str,
    input_file: str,
    fingerprint: str,
    completion_window_s: float | None,
) -> OpenedBatch:
    """Record the batch once; a batch already known keeps its first window."""
    now_ms = time.time() * 1000
    expires_ms = 0 if completion_window_s is None else round(now_ms + completion_window_s * 1000)
    reply = _call(
        client, "vlmq_open_batch", client.keys.batch(batch_id).base,
        str(expires_ms), str(client.result_ttl_ms),
        "queue", queue, "input_file", input_file, "fingerprint", fingerprint,
    )
    return OpenedBatch(created=bool(int(reply[0])), info=read_batch(client, batch_id))


def read_batch(client: Client, batch_id: str, *, expire_due: bool = True) -> BatchInfo:
    """The batch as it stands. With `expire_due`, a batch whose window ended is closed first
    (servers do it too, but a batch nobody serves must still end)."""
    keys = client.keys.batch(batch_id)
    pipe = client.redis.pipeline(transaction=False)
    pipe.hgetall(keys.info)
    pipe.hgetall(keys.counts)
    pipe.hlen(keys.line_errors)
    info_raw, counts_raw, line_errors = pipe.execute()
    info = {_text(k): _text(v) for k, v in info_raw.items()}
    counts = {_text(k): int(v) for k, v in counts_raw.items()}
    if not info and not counts:
        raise NoSuchBatchError(f"no batch {batch_id} (never submitted, or its results expired)")
    expires_ms = int(info["expires_ms"]) if info.get("expires_ms") else None
    if (
        expire_due and expires_ms is not None and not info.get("closed")
        and counts.get("open", 0) > 0 and time.time() * 1000 >= expires_ms
    ):
        expire(client, batch_id)
        return read_batch(client, batch_id, expire_due=False)
    return BatchInfo(
        batch_id=batch_id,
        queue=info.get("queue", ""),
        input_file=info.get("input_file", ""),
        fingerprint=info.get("fingerprint", ""),
        created_ms=int(info.get("created_ms", 0)),
        expires_ms=expires_ms,
        closed=info.get("closed") or None,
        closed_ms=int(info["closed_ms"]) if info.get("closed_ms") else None,
        finished_ms=int(counts["finished_ms"]) if counts.get("finished_ms") else None,
        next_line=int(info.get("next_line", 1)),
        counts=BatchCounts(**{name: counts.get(name, 0) for name in BatchCounts.__slots__}),
        line_errors=int(line_errors),
        expired_jobs=counts.get("expired", 0),
        prompt_tokens=counts.get("prompt_tokens", 0),
        completion_tokens=counts.get("completion_tokens", 0),
    )


def expire(client: Client, batch_id: str) -> bool:
    """Close the batch if its window ended (by Redis's clock); whether it was due."""
    try:
        client.batch(batch_id).close("expired")
    except QueueError as error:
        if str(error).startswith("NOT_DUE") or "completion window" in str(error):
            return False
        raise
    return True


def record_line_errors(client: Client, batch_id: str, errors: list[LineError]) -> None:
    """Keep the lines that never became jobs; the same line recorded again changes nothing.
    They live as long as the batch's info."""
    if not errors:
        return
    keys = client.keys.batch(batch_id)
    mapping: dict[Any, Any] = {
        str(error.line): json.dumps(
            {"custom_id": error.custom_id, "code": error.code, "message": error.message},
            ensure_ascii=False,
        )
        for error in errors
    }
    pipe = client.redis.pipeline(transaction=True)
    pipe.hset(keys.line_errors, mapping=mapping)
    pipe.pttl(keys.info)
    _, ttl_ms = pipe.execute()
    if int(ttl_ms) > 0:
        client.redis.pexpire(keys.line_errors, int(ttl_ms))


def line_errors(client: Client, batch_id: str) -> Iterator[LineError]:
    """The batch's line errors, by line number."""
    raw = client.redis.hgetall(client.keys.batch(batch_id).line_errors)
    for line in sorted(int(_text(k)) for k in raw):
        value = json.loads(_text(raw[str(line).encode()]))
        yield LineError(line, value["custom_id"], value["code"], value["message"])


def _call(client: Client, function: str, key: str, *args: str) -> Any:
    try:
        return client.redis.fcall(function, 1, key, *args)
    except redis.ResponseError as error:
        raise refusal_from_reply(str(error)) from None


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
