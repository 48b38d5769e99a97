"""The seam between the queue server and what runs jobs: the `Pipeline`, or a stand-in.

`Pipeline` satisfies it. Benchmarks of the queue itself and tests of the protocol's failure
handling run a no-op or scripted runner here; that is the one place the queue is faked.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from orchestrator.pipeline.actor_load import ActorLoad
from orchestrator.pipeline.job import JobOutcome, JobRequest


class JobRunner(Protocol):
    @property
    def capacity(self) -> int:
        """How many jobs to hold at once; the server claims no more than this."""

    def submit(self, job: JobRequest) -> Future[JobOutcome]:
        """Start a job without blocking; the future resolves with its outcome, always."""

    def cancel(self, job_id: str) -> bool:
        """End a job in flight now (outcome `JobCancelledError`); False if it is not."""

    def actor_loads(self) -> tuple[ActorLoad, ...]:
        """The actors jobs run on and what each runs now (the server publishes it for `vlmq
        status`); empty for a runner without actors. Called from a thread of its own."""
