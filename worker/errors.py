"""Every exception vlmq raises on purpose, in one hierarchy.

`VlmqError` is the root. A `JobError` is the job's own fault (bad input): it fails that job
with a readable message and nothing else. Anything else is the system's fault and may be
retried elsewhere.
"""

from __future__ import annotations


class VlmqError(Exception):
    """Root of every error vlmq raises on purpose."""


class JobError(VlmqError):
    """The job's input is at fault; retrying it unchanged cannot succeed."""


class PromptEncodingError(JobError):
    """A prompt and its spans do not fit together."""

    def __init__(self, alias: str, message: str) -> None:
        super().__init__(message)
        # The offending alias, so callers can point at it without parsing the message.
        self.alias = alias


class AliasWithoutSpanError(PromptEncodingError):
    """The prompt contains an image alias for which no span was given."""


class SpanWithoutAliasError(PromptEncodingError):
    """A span was given whose alias does not occur in the prompt."""


class ConflictingSpansError(PromptEncodingError):
    """Two spans share an alias but name different token ranges."""


class InvalidSpanError(PromptEncodingError):
    """A span is malformed: empty alias, empty range, or more special rows than rows."""


class AllocatorError(VlmqError):
    """The token-range allocator could not serve a request."""


class AllocatorStateUnavailableError(AllocatorError):
    """The allocator's durable state (Redis) cannot be reached, so no new IDs may be issued."""


class InvalidAllocationError(AllocatorError, JobError):
    """An allocation request is malformed (non-positive length, range longer than the region)."""


class StaleEpochError(VlmqError):
    """A request carries token ranges of an epoch older than one the generator has entered.

    Its IDs may now name other images, so it must get fresh ranges and be tried again.
    """
