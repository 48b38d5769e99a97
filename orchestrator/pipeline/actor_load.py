"""One actor of a running pipeline and what it runs now: the load `vlmq status` shows.

The pipeline reads it off its slots (`Pipeline.actor_loads`); the queue server publishes it
in Redis with its own counts (`orchestrator/queue/server_load.py`), so `vlmq status` shows every
server's actors without a connection to Ray.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SlotState(enum.StrEnum):
    STARTING = "starting"  # started, not answering yet
    OPEN = "open"  # takes requests
    DRAINING = "draining"  # takes no new requests; killed once its running ones end
    DOWN = "down"  # died; Ray is restarting it, nothing is routed to it meanwhile
    GONE = "gone"  # given up on: dead for good, or down past the restart deadline


@dataclass(frozen=True, slots=True)
class ActorLoad:
    role: str  # vision | generator
    name: str  # the actor's Ray name, as the dashboard shows it
    state: SlotState
    # Requests (images, for a vision actor) sent to it and not answered yet: those its engine
    # runs and those queued in it for a batch slot.
    running: int
    gpus: float  # the GPU share it was started with
