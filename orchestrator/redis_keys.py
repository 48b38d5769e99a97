"""Every Redis key vlmq writes, in one place, so operators can see what a namespace holds.

Every key of one deployment starts with its hash tag `{namespace}`, so on Redis Cluster they
all live in one slot and each Redis Function may touch any of them. The queue's functions
(`orchestrator/queue/functions.lua`) build the same names from the tag; `QueueKeys` is the
Python side of that one layout, and `docs/PROTOCOL.md` lists it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Namespaces and queue names go into key names and the hash tag: no braces, colons or spaces.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# The consumer group every lane stream is read through.
CONSUMER_GROUP = "vlmq"


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise ValueError(f"{kind} must be 1 to 64 characters of [A-Za-z0-9_.-], got {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key names under one namespace; deployments that share a Redis use different namespaces."""

    namespace: str = "vlmq"

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)

    @property
    def tag(self) -> str:
        """The hash tag that starts every key of this deployment."""
        return f"{{{self.namespace}}}"

    @property
    def allocator_state(self) -> str:
        """Hash with fields `epoch` and `hwm`: the token-ID high-water mark and its epoch."""
        return f"{self.tag}:allocator:state"

    @property
    def queues(self) -> str:
        """Set of every queue name a job was submitted to."""
        return f"{self.tag}:queues"

    @property
    def cancel_channel(self) -> str:
        """Pub/Sub channel: the ID of each running job whose cancel was asked for."""
        return f"{self.tag}:cancel"

    def job(self, job_id: str) -> str:
        """Hash: one job's payload, state, fencing token, deliveries, result and history."""
        return f"{self.tag}:job:{job_id}"

    def queue(self, name: str) -> QueueKeys:
        return QueueKeys(self.tag, check_name("queue", name))

    @property
    def batch_deadlines(self) -> str:
        """Sorted set: open batches with a completion window, scored by its end in ms."""
        return f"{self.tag}:batch-deadlines"

    def batch(self, batch_id: str) -> BatchKeys:
        return BatchKeys(f"{self.tag}:batch:{batch_id}")


@dataclass(frozen=True, slots=True)
class QueueKeys:
    tag: str
    name: str

    @property
    def base(self) -> str:
        """Hash: the queue's settings (`max_backlog`, `max_payload_bytes`) and counters.

        Every queue-level function takes this key as its KEYS[1].
        """
        return f"{self.tag}:q:{self.name}"

    def lane(self, priority: int) -> str:
        """Stream of one priority lane: one entry per queued job, field `job` = its ID."""
        return f"{self.base}:lane:{priority}"

    @property
    def leases(self) -> str:
        """Sorted set: running job ID -> the ms its lease ends."""
        return f"{self.base}:leases"

    @property
    def delayed(self) -> str:
        """Sorted set: job ID waiting to be retried -> the ms it is due."""
        return f"{self.base}:delayed"

    @property
    def dead(self) -> str:
        """Stream, capped: one entry per job sent to the dead letters (`job`, `reason`)."""
        return f"{self.base}:dead"

    @property
    def wake(self) -> str:
        """List of at most one element: pushed on submit, popped by an idle server."""
        return f"{self.base}:wake"

    @property
    def servers(self) -> str:
        """Sorted set: consumer name of each server -> the ms it was last heard from."""
        return f"{self.base}:servers"

    def server_load(self, consumer: str) -> str:
        """String, JSON, expiring: what the server `consumer` holds and its actors run now
        (`orchestrator/queue/server_load.py`); a report for `vlmq status`, read by nothing else."""
        return f"{self.base}:load:{consumer}"


@dataclass(frozen=True, slots=True)
class BatchKeys:
    base: str

    @property
    def counts(self) -> str:
        """Hash: `total`, `open` and one count per state of the batch's jobs."""
        return self.base

    @property
    def jobs(self) -> str:
        """List of the batch's job IDs in the order they were submitted."""
        return f"{self.base}:jobs"

    @property
    def events(self) -> str:
        """Stream: one entry (`job`, `state`) per job of the batch that reached a final state."""
        return f"{self.base}:events"

    @property
    def info(self) -> str:
        """Hash: what the batch was opened with (its input file, deadline) and how it closed."""
        return f"{self.base}:info"

    @property
    def line_errors(self) -> str:
        """Hash: input line number -> JSON of the line's error, for lines never submitted."""
        return f"{self.base}:line_errors"
