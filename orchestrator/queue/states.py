"""A queued job's states, and the priorities it can be queued at."""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    QUEUED = "queued"  # waiting in its priority's lane
    RUNNING = "running"  # claimed by a worker under a lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the job's own fault, or the system gave up on it
    CANCELLED = "cancelled"  # by the user, before it finished
    DEAD = "dead"  # given up after too many deliveries without a result

    @property
    def is_terminal(self) -> bool:
        """True once the job has its one result and will not run again."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


class Priority(enum.IntEnum):
    # One Redis stream lane each; a lower value is served first.
    HIGH = 0
    NORMAL = 1
    LOW = 2
