"""A batch's results as OpenAI's output and error files, readable while the batch still runs.

Each call writes what is final now: one output line per succeeded job, one error line per
failed, dead, cancelled or expired job and per line of the input that never became a job.
Files are written whole to a temporary name and renamed, so a reader never sees half a file;
running the export again later writes the larger snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orchestrator.batches.batch_record import BatchInfo, line_errors, read_batch
from orchestrator.batches.openai_input import CHAT_ENDPOINT
from orchestrator.batches.openai_output import (
    cancelled_record,
    error_record,
    expired_record,
    failure_record,
    output_record,
)
from orchestrator.queue.client import Client
from orchestrator.queue.schema import JobResult, JobState, decode_job

_JOBS_PER_READ = 500


@dataclass(frozen=True, slots=True)
class ExportReport:
    info: BatchInfo
    outputs: int  # lines written to the output file
    errors: int  # lines written to the error file (or that would have been, without one)
    unfinished: int  # jobs not yet final: a later export will hold them


def export_results(
    client: Client, batch_id: str, output: Path, errors: Path | None = None
) -> ExportReport:
    """Write the batch's output file (and its error file, when given) as they stand now.

    Without an error file, the error lines are counted but not written (OpenAI's output file
    holds only successes).
    """
    info = read_batch(client, batch_id)
    counts = {"outputs": 0, "errors": 0, "unfinished": 0}
    with _ReplacedFile(output) as out, _ReplacedFile(errors) as err:
        for line in line_errors(client, batch_id):
            counts["errors"] += 1
            _write(err, error_record(
                line.custom_id, line.code, f"line {line.line}: {line.message}",
                request_id=_request_id(f"{batch_id}/line-{line.line}"), status_code=400,
            ))
        for job in _final_jobs(client, batch_id, counts):
            custom_id = str(job.metadata.get("custom_id", ""))
            request_id = _request_id(job.job_id)
            if job.result.state is JobState.SUCCEEDED:
                counts["outputs"] += 1
                _write(out, output_record(
                    custom_id, job.result,
                    endpoint=str(job.metadata.get("endpoint") or CHAT_ENDPOINT),
                    model=str(job.metadata.get("model") or info.queue),
                    request_id=request_id,
                    created=job.finished_ms // 1000,
                ))
                continue
            counts["errors"] += 1
            if job.cancel_reason == "batch_expired":
                record = expired_record(custom_id, request_id=request_id)
            elif job.cancel_reason == "batch_cancelled":
                record = cancelled_record(custom_id, request_id=request_id)
            else:
                record = failure_record(custom_id, job.result, request_id=request_id)
            _write(err, record)
    return ExportReport(info, counts["outputs"], counts["errors"], counts["unfinished"])


@dataclass(frozen=True, slots=True)
class _FinalJob:
    job_id: str
    result: JobResult
    metadata: dict[str, Any]  # as the job was submitted with (custom_id, endpoint, model)
    cancel_reason: str | None
    finished_ms: int


def _final_jobs(client: Client, batch_id: str, counts: dict[str, int]) -> Iterator[_FinalJob]:
    """Each final job of the batch, in the order the batch took them; unfinished ones are
    counted."""
    job_ids = client.batch(batch_id).job_ids()
    for start in range(0, len(job_ids), _JOBS_PER_READ):
        chunk = job_ids[start : start + _JOBS_PER_READ]
        results = client._results(chunk)
        pipe = client.redis.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hmget(client.keys.job(job_id), "cancel_reason", "finished_ms")
        extras = pipe.execute()
        for job_id, result, (reason, finished) in zip(chunk, results, extras, strict=True):
            if result is None:
                counts["unfinished"] += 1
                continue
            metadata: dict[str, Any] = dict(result.metadata)
            if "custom_id" not in metadata:
                # Ended without a server's result (cancelled or expired while queued): the
                # custom_id is in the payload it was submitted with.
                payload: Any = client.redis.hget(client.keys.job(job_id), "payload")
                if payload:
                    metadata = dict(decode_job(payload).metadata)
            yield _FinalJob(
                job_id, result, metadata, reason.decode() if reason else None,
                int(finished or 0),
            )


def _request_id(job_id: str) -> str:
    return "batch_req_" + hashlib.sha256(job_id.encode()).hexdigest()[:24]


def _write(stream: IO[str] | None, record: dict[str, Any]) -> None:
    if stream is not None:
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")


class _ReplacedFile:
    """A text file written under a temporary name and renamed over `path` when complete."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.stream: IO[str] | None = None
        self.temp = ""

    def __enter__(self) -> IO[str] | None:
        if self.path is None:
            return None
        directory = self.path.parent if str(self.path.parent) else Path(".")
        fd, self.temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as an ordinary new file would be, not mkstemp's 0600
        self.stream = os.fdopen(fd, "w", encoding="utf-8")
        return self.stream

    def __exit__(self, kind: object, *_: object) -> None:
        if self.stream is None:
            return
        self.stream.close()
        if kind is None:
            os.replace(self.temp, self.path)  # type: ignore[arg-type]
        else:
            os.unlink(self.temp)
