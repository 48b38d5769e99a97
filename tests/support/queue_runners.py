"""Runners for the queue server's declared seam (`orchestrator/queue/runner.py`).

The protocol tests need jobs that take as long, or fail as, the test says, without a model:
`ScriptedRunner` reads what to do from the prompt. Everything else they touch is real: the
redis-server, the Functions library, the server's loops, the client.

Prompt words (the first one decides):
- `sleep:S` takes S seconds, then succeeds (cancellable meanwhile);
- `transient` fails with a system error (retried by the queue);
- `bad` fails with a JobError (failed at once);
- `exit` ends the process at once (os._exit), as a crash under a job would;
- anything else succeeds at once, its text the prompt reversed.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

from orchestrator.pipeline.actor_load import ActorLoad
from orchestrator.pipeline.job import JobFailure, JobOutcome, JobRequest
from worker.generation import FinishReason, GenerationResult, Timings


class ScriptedRunner:
    def __init__(self, capacity: int = 16, max_sleep_s: float | None = None) -> None:
        self._capacity = capacity
        self._max_sleep_s = max_sleep_s  # a cap on `sleep:S`, for a job that ran long before
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Future[JobOutcome], threading.Event]] = {}
        self.started: list[str] = []  # job IDs in the order they were submitted
        self.cancelled: list[str] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(self, job: JobRequest) -> Future[JobOutcome]:
        future: Future[JobOutcome] = Future()
        cancel = threading.Event()
        with self._lock:
            self.started.append(job.job_id)
            self._running[job.job_id] = (future, cancel)
        word = job.prompt.split(" ", 1)[0]
        if word.startswith("sleep:"):
            seconds = float(word.split(":", 1)[1])
            if self._max_sleep_s is not None:
                seconds = min(seconds, self._max_sleep_s)
            threading.Thread(
                target=self._sleep_then_succeed, args=(job, seconds, cancel), daemon=True
            ).start()
        elif word == "exit":
            os._exit(9)
        elif word == "transient":
            self._resolve(job.job_id, _failure(job, "EngineDiedError", "scripted", False))
        elif word == "bad":
            self._resolve(job.job_id, _failure(job, "InvalidRequestError", "scripted", True))
        else:
            self._resolve(job.job_id, success(job))
        return future

    def actor_loads(self) -> tuple[ActorLoad, ...]:
        return ()  # no actors: the server publishes its own counts only

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            entry = self._running.get(job_id)
            if entry is not None:
                self.cancelled.append(job_id)
        if entry is None:
            return False
        entry[1].set()
        return True

    def _sleep_then_succeed(self, job: JobRequest, seconds: float, cancel: threading.Event) -> None:
        if cancel.wait(seconds):
            self._resolve(job.job_id, _failure(job, "JobCancelledError", "cancelled", False))
        else:
            self._resolve(job.job_id, success(job))

    def _resolve(self, job_id: str, outcome: JobOutcome) -> None:
        with self._lock:
            future, _ = self._running.pop(job_id)
        future.set_result(outcome)


def success(job: JobRequest) -> JobOutcome:
    text = job.prompt[::-1]
    timings = Timings(queue_s=0.0, prefill_s=0.0, decode_s=0.0)
    result = GenerationResult(job.job_id, text, FinishReason.EOS, len(job.prompt), 1, (0,),
                              timings)
    return JobOutcome(job.job_id, result, None, 1)


def _failure(job: JobRequest, error_type: str, message: str, is_job_error: bool) -> JobOutcome:
    return JobOutcome(job.job_id, None, JobFailure(error_type, message, is_job_error), 1)
