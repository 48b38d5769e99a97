"""The cluster as Ray's dashboard shows it: vlmq's actors per role, their GPUs and state.

Read through Ray's state API, over HTTP to the cluster's dashboard, so no `ray.init` is needed
and `vlmq status` can show it beside the queue. Ray is imported inside the function: the
Redis-only paths of the CLI never load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLE_BY_CLASS = {
    "VisionActor": "vision",
    "GeneratorActor": "generator",
    "TokenRangeAllocator": "allocator",
}


class ClusterUnreachableError(Exception):
    """Ray's state API did not answer at the address (no dashboard there, or not up)."""


@dataclass(frozen=True, slots=True)
class ActorView:
    role: str  # vision | generator | allocator
    name: str  # e.g. {namespace}-{queue}-generator-0
    state: str  # Ray's: ALIVE, RESTARTING, DEAD, PENDING_CREATION, ...
    num_gpus: float  # the GPU share Ray reserved for it
    num_restarts: int
    node_id: str | None
    pid: int | None


@dataclass(frozen=True, slots=True)
class ClusterView:
    actors: tuple[ActorView, ...]  # by role, then name

    def of_role(self, role: str) -> tuple[ActorView, ...]:
        return tuple(actor for actor in self.actors if actor.role == role)

    def num_alive(self, role: str) -> int:
        return sum(actor.state == "ALIVE" for actor in self.of_role(role))


def cluster_view(address: str, name_prefix: str = "", include_dead: bool = False) -> ClusterView:
    """vlmq's actors on the cluster whose dashboard is at `address` (http://host:8265).

    `name_prefix` keeps the actors of one deployment (`{namespace}-` or `{namespace}-{queue}-`);
    dead ones are left out unless asked for (a restarted actor keeps its name and its entry).
    """
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    # What `ray.init` does first: with a token at hand (~/.ray/auth_token, RAY_AUTH_TOKEN) and
    # RAY_AUTH_MODE unset, the dashboard is asked with it; a cluster with token auth refuses
    # requests without one.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        found: list[Any] = list_actors(address=address, limit=10_000, detail=True)
    except (RayStateApiException, ConnectionError) as error:
        raise ClusterUnreachableError(
            f"Ray's state API at {address} did not answer: {error}"
        ) from error
    views = []
    for actor in found:
        role = ROLE_BY_CLASS.get(actor.class_name)
        name = actor.name or ""
        if role is None or not name.startswith(name_prefix):
            continue
        if actor.state == "DEAD" and not include_dead:
            continue
        resources = actor.required_resources or {}
        views.append(ActorView(
            role=role,
            name=name,
            state=str(actor.state),
            num_gpus=float(resources.get("GPU", 0.0)),
            num_restarts=int(actor.num_restarts or 0),
            node_id=actor.node_id,
            pid=actor.pid or None,
        ))
    return ClusterView(tuple(sorted(views, key=lambda view: (view.role, view.name))))
