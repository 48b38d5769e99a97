"""Submit an OpenAI Batch input file as one vlmq batch, resuming where an earlier run stopped.

The file is read in windows of lines. Each window's line errors are recorded first, then its
jobs go in with one `vlmq_submit_many` call that also records the window's end as the batch's
`next_line`: Redis runs it atomically, so after a crash at any moment the record says exactly
which lines are in. A resubmission of the same file (the same batch) skips the lines before
`next_line`; a job of a later line that is known already (the window that was in flight)
answers `exists` and is not added again.

Within a window, lines that share an image are put next to each other (stable, by the first
image's key), so they are claimed together and the router sends them to the generator that
already holds the image (and its prefix cache).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.batches.batch_ids import batch_id_for, file_fingerprint, job_id_for
from orchestrator.batches.batch_record import BatchInfo, open_batch, read_batch, record_line_errors
from orchestrator.batches.chat_template import ChatTemplate
from orchestrator.batches.image_grouping import group_by_image
from orchestrator.batches.openai_input import BatchRequest, LineError, read_lines
from orchestrator.queue.client import Client
from orchestrator.queue.errors import BatchClosedError, QueueFullError
from orchestrator.queue.schema import JobSpec, Priority

WINDOW_LINES = 2048  # lines grouped and submitted together
WINDOW_BYTES = 32 << 20  # ... or fewer, so one call's payloads stay well under Redis's limits
_FULL_WAIT_S = (0.5, 10.0)  # the wait while the queue is full: first, and at most


@dataclass(frozen=True, slots=True)
class SubmitProgress:
    lines_read: int
    accepted: int  # jobs added by this run
    known: int  # lines already in from an earlier run
    line_errors: int
    waiting_for_room: bool = False  # the queue is at its max_backlog


@dataclass(frozen=True, slots=True)
class SubmitReport:
    batch_id: str
    created: bool  # a new batch (False: this run resumed one)
    lines: int  # request lines read (blank lines are not requests)
    accepted: int  # jobs added by this run
    known: int  # lines that were in before this run
    line_errors: tuple[LineError, ...]  # every bad line of the file, by line number
    closed: str | None  # the batch was cancelled or expired: nothing more was added
    info: BatchInfo


@dataclass(slots=True)
class _Window:
    requests: list[BatchRequest] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    payload_bytes: int = 0
    last_line: int = 0


def submit_batch_file(
    client: Client,
    path: Path,
    *,
    queue: str,
    template: ChatTemplate | None,
    completion_window_s: float | None = 24 * 3600,
    priority: Priority = Priority.NORMAL,
    wait_when_full: bool = True,
    on_progress: Callable[[SubmitProgress], None] | None = None,
) -> SubmitReport:
    """Submit (or resume) the batch of the file at `path`.

    Raises `QueueFullError` when the queue is full and `wait_when_full` is False (what was
    accepted stays, and a later run resumes); an OSError when the file cannot be read.
    """
    fingerprint = file_fingerprint(path)
    batch_id = batch_id_for(fingerprint, queue)
    opened = open_batch(
        client, batch_id, queue=queue, input_file=path.name, fingerprint=fingerprint,
        completion_window_s=completion_window_s,
    )
    start_line = opened.info.next_line
    accepted = known = lines = 0
    errors: list[LineError] = []
    closed = opened.info.closed

    def report(waiting: bool = False) -> None:
        if on_progress is not None:
            on_progress(SubmitProgress(lines, accepted, known, len(errors), waiting))

    with path.open("rb") as stream:
        for window in _windows(read_lines(stream, template)):
            lines += len(window.requests) + len(window.errors)
            errors += window.errors
            if closed is not None:
                continue  # keep reading: the report still lists every line error
            if window.last_line < start_line:
                known += len(window.requests)
                report()
                continue
            record_line_errors(client, batch_id, window.errors)
            specs = [_job_of(request, batch_id, queue, priority) for request in
                     group_by_image(window.requests, _first_image_key)]
            try:
                added, again = _submit_window(
                    client, batch_id, specs, window.last_line + 1,
                    wait_when_full=wait_when_full, on_wait=lambda: report(waiting=True),
                )
            except BatchClosedError:
                closed = read_batch(client, batch_id, expire_due=False).closed or "closed"
                continue
            accepted += added
            known += again
            report()
    return SubmitReport(
        batch_id=batch_id,
        created=opened.created,
        lines=lines,
        accepted=accepted,
        known=known,
        line_errors=tuple(errors),
        closed=closed,
        info=read_batch(client, batch_id),
    )


def _windows(items: Iterator[BatchRequest | LineError]) -> Iterator[_Window]:
    window = _Window()
    for item in items:
        if isinstance(item, LineError):
            window.errors.append(item)
        else:
            window.requests.append(item)
            window.payload_bytes += len(item.prompt) + sum(
                len(image) if isinstance(image, bytes) else 256 for image in item.images
            )
        window.last_line = item.line
        if len(window.requests) + len(window.errors) >= WINDOW_LINES or (
            window.payload_bytes >= WINDOW_BYTES
        ):
            yield window
            window = _Window()
    if window.requests or window.errors:
        yield window


def _first_image_key(request: BatchRequest) -> str | None:
    return request.image_keys[0] if request.image_keys else None


def _job_of(request: BatchRequest, batch_id: str, queue: str, priority: Priority) -> JobSpec:
    return JobSpec(
        job_id=job_id_for(batch_id, request.custom_id),
        queue=queue,
        prompt=request.prompt,
        images=request.images,
        sampling=request.sampling,
        priority=priority,
        metadata={
            "custom_id": request.custom_id,
            "line": request.line,
            "endpoint": request.endpoint,
            "model": request.model,
        },
    )


def _submit_window(
    client: Client,
    batch_id: str,
    specs: list[JobSpec],
    next_line: int,
    *,
    wait_when_full: bool,
    on_wait: Callable[[], None],
) -> tuple[int, int]:
    """(jobs added, jobs known already); waits out a full queue if asked."""
    batch = client.batch(batch_id)
    if not specs:
        # Only line errors: no job call to carry the progress, and nothing to keep atomic.
        client.redis.hset(client.keys.batch(batch_id).info, "next_line", str(next_line))
        return 0, 0
    added = known = 0
    wait_s = _FULL_WAIT_S[0]
    pending = specs
    while True:
        try:
            receipts = batch.submit_window(pending, next_line)
        except QueueFullError as full:
            added += sum(1 for receipt in full.accepted if receipt.created)
            known += sum(1 for receipt in full.accepted if not receipt.created)
            if not wait_when_full:
                raise
            taken = {receipt.job_id for receipt in full.accepted}
            pending = [spec for spec in pending if spec.job_id not in taken]
            on_wait()
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, _FULL_WAIT_S[1])
            continue
        added += sum(1 for receipt in receipts if receipt.created)
        known += sum(1 for receipt in receipts if not receipt.created)
        return added, known
