"""What the queue's client and server raise, each one a refusal the caller can act on."""

from __future__ import annotations

from typing import Any

from worker.errors import VlmqError


class QueueError(VlmqError):
    """Root of the queue's own errors.

    A refusal raised by `Client.submit_many` also says what happened to its chunk:
    `accepted` holds the receipts of the jobs taken before it was raised, `refused` the
    (job ID, reason) of each job refused.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.accepted: list[Any] = []
        self.refused: list[tuple[str, str]] = []


class QueueFullError(QueueError):
    """The queue holds `max_backlog` unfinished jobs; nothing accepted was trimmed to make room."""


class PayloadTooLargeError(QueueError):
    """The encoded job is over the queue's `max_payload_bytes`."""


class SubmitRefusedError(QueueError):
    """The server-side function refused a submission's arguments."""


class BatchClosedError(QueueError):
    """The batch was cancelled or its completion window ended: it takes no more jobs."""


class NoSuchJobError(QueueError, KeyError):
    """No job has that ID: it was never submitted, or its result has expired."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class JobTimeoutError(QueueError, TimeoutError):
    """`wait` ran out of time before the job reached a final state."""


def refusal_from_reply(message: str) -> QueueError:
    """The typed error for a `-CODE message` error reply of the queue's functions."""
    code, _, rest = message.partition(" ")
    kinds: dict[str, type[QueueError]] = {
        "QUEUE_FULL": QueueFullError,
        "TOO_LARGE": PayloadTooLargeError,
        "NO_SUCH_JOB": NoSuchJobError,
        "INVALID": SubmitRefusedError,
        "BATCH_CLOSED": BatchClosedError,
    }
    kind = kinds.get(code)
    return kind(rest) if kind is not None else QueueError(message)
