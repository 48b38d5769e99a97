"""What `vlmq status BATCH` shows of one batch: read once by `read_batch_view`, rendered as
lines or as JSON. The one place a batch's view is built, so new fields go here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.batches.batch_record import BatchInfo, NoSuchBatchError, read_batch
from orchestrator.cli.command_error import CommandError
from orchestrator.cli.exit_codes import ExitCode
from orchestrator.queue.client import BatchCounts, Client

# The states a batch's jobs are counted in, in the order they are shown.
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "dead")


@dataclass(frozen=True, slots=True)
class BatchView:
    batch_id: str
    counts: BatchCounts
    info: BatchInfo | None = None  # the record of a batch file (`vlmq submit`), if it is one

    @property
    def finished(self) -> int:
        return self.counts.total - self.counts.open

    @property
    def done(self) -> bool:
        """No job of it is unfinished: a watch of it ends."""
        return self.counts.open == 0

    def per_state(self) -> dict[str, int]:
        return {state: getattr(self.counts, state) for state in STATES}

    def as_json(self) -> dict[str, Any]:
        view = {
            "batch": self.batch_id,
            "total": self.counts.total,
            "unfinished": self.counts.open,
            "done": self.done,
            "counts": self.per_state(),
        }
        if self.info is not None:
            view |= self.info.as_json()  # OpenAI's Batch fields: status, request_counts, ...
        return view

    def summary(self) -> str:
        states = ", ".join(f"{n} {state}" for state, n in self.per_state().items())
        line = (f"batch {self.batch_id}: {self.counts.total} jobs, {self.counts.open} "
                f"unfinished; {states}")
        if self.info is not None:
            info = self.info
            counts = info.request_counts
            line += (
                f"\n{info.status}: {counts.total} requests from {info.input_file}; "
                f"{counts.completed} completed, {counts.failed} failed "
                f"({info.line_errors} bad lines), {counts.cancelled} cancelled, "
                f"{counts.expired} expired; {info.prompt_tokens} prompt + "
                f"{info.completion_tokens} completion tokens"
            )
        return line


def read_batch_view(client: Client, batch_id: str) -> BatchView:
    # A batch exists while its counts do (they expire with its results) or its record does;
    # reading it also ends a batch whose completion window is over.
    try:
        info = read_batch(client, batch_id)
    except NoSuchBatchError as error:
        raise CommandError(str(error), ExitCode.NOT_FOUND) from None
    return BatchView(batch_id, info.counts, info if info.input_file else None)
