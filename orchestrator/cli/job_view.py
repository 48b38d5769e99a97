"""One job's status for people (lines) and for scripts (a JSON object)."""

from __future__ import annotations

from typing import Any

from orchestrator.queue.client import JobStatus


def job_json(job: JobStatus) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "queue": job.queue,
        "state": job.state.value,
        "priority": job.priority,
        "deliveries": job.deliveries,
        "created_ms": job.created_ms,
        "finished_ms": job.finished_ms,
        "history": list(job.history),
    }


def job_lines(job: JobStatus) -> list[str]:
    return [
        f"job {job.job_id}: {job.state.value} on queue {job.queue}, {job.deliveries} deliveries",
        *(f"  {line}" for line in job.history),
    ]
