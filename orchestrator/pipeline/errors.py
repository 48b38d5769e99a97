"""Errors of the pipeline itself: the system's, never the job's (none is a `JobError`).

A job that fails with one of these failed for want of something the cluster should provide (an
actor, the allocator's Redis) or because the pipeline was closed under it; the same job may
succeed when that is back.
"""

from __future__ import annotations

from worker.errors import VlmqError


class NoActorAvailableError(VlmqError):
    """No actor of a kind (generator, vision) is up, and none is expected back in time.

    Raised to requests that wait for such an actor once every actor of the kind is dead for
    good (Ray reports it DEAD) or has been down longer than `actor_restart_timeout_s`.
    """

    def __init__(self, kind: str, why_down: dict[int, str]) -> None:
        reasons = "; ".join(f"{kind} {index} {why}" for index, why in sorted(why_down.items()))
        super().__init__(f"no {kind} actor is up: {reasons}")
        self.kind = kind
        self.why_down = dict(why_down)

    def __reduce__(self) -> tuple[type[NoActorAvailableError], tuple[str, dict[int, str]]]:
        return (type(self), (self.kind, self.why_down))


class PipelineClosedError(VlmqError):
    """`Pipeline.close()` was called before the job finished (or before `run()` started)."""
