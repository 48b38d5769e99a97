"""What one queue server holds and what its actors run, as it publishes it for `vlmq status`.

Each server writes its load every reap pass (`reap_every_s`) to the string key
`QueueKeys.server_load(consumer)`: one JSON object, read by people (`redis-cli GET`) and by
clients in any language (docs/PROTOCOL.md). The key expires `LOAD_TTL_S` after the last write
and is deleted when the server stops, so a dead server's load does not outlive it. It is a
report, never an input: nothing in the queue's protocol reads it back.

Reading is defensive (`decode_server_load`): anything on Redis may have been written by
something else, so a value that is not this schema is refused with a `ValueError` that says
what is wrong, never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator.pipeline.actor_load import ActorLoad, SlotState

LOAD_VERSION = 1
# As long as a server counts as live in the queue's `servers` set (SERVER_SEEN_S in client.py).
LOAD_TTL_S = 10.0
MAX_LOAD_BYTES = 1 << 20  # a load bigger than this is refused unread: no server writes one

_ROLES = ("vision", "generator")
LOAD_FIELDS = frozenset({"v", "consumer", "held", "capacity", "written_ms", "actors"})
ACTOR_LOAD_FIELDS = frozenset({"role", "name", "state", "running", "gpus"})


@dataclass(frozen=True, slots=True)
class ServerLoad:
    consumer: str  # the server's consumer name, as in the queue's `servers` set
    held: int  # jobs it has claimed and not finished
    capacity: int  # the most it claims at once
    written_ms: int  # when it wrote this, by its own clock (ms since the epoch)
    actors: tuple[ActorLoad, ...]  # vision first; empty for a runner without actors

    def of_role(self, role: str) -> tuple[ActorLoad, ...]:
        return tuple(actor for actor in self.actors if actor.role == role)


@dataclass(frozen=True, slots=True)
class PublishedLoad:
    """What a live server of the queue published: its load, or why there is none to show."""

    consumer: str
    load: ServerLoad | None
    problem: str = ""  # with no load: "nothing published", or why the value was refused


def load_fields(load: ServerLoad) -> dict[str, Any]:
    """The load as the JSON object's fields (all but `v`), for the key and for `vlmq status`."""
    return {
        "consumer": load.consumer,
        "held": load.held,
        "capacity": load.capacity,
        "written_ms": load.written_ms,
        "actors": [
            {"role": a.role, "name": a.name, "state": a.state.value, "running": a.running,
             "gpus": a.gpus}
            for a in load.actors
        ],
    }


def encode_server_load(load: ServerLoad) -> bytes:
    return json.dumps({"v": LOAD_VERSION, **load_fields(load)}, separators=(",", ":")).encode()


def decode_server_load(raw: bytes | str) -> ServerLoad:
    """The load in `raw`; `ValueError` naming the first thing that is not the schema."""
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_LOAD_BYTES:
        raise ValueError(f"{len(raw)} bytes, more than the {MAX_LOAD_BYTES} a load may have")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    fields = _object(value, LOAD_FIELDS, "the load")
    if fields["v"] != LOAD_VERSION:
        raise ValueError(f"version {fields['v']!r}, this vlmq reads version {LOAD_VERSION}")
    actors = fields["actors"]
    if not isinstance(actors, list):
        raise ValueError("actors: not a list")
    return ServerLoad(
        consumer=_text(fields["consumer"], "consumer"),
        held=_count(fields["held"], "held"),
        capacity=_count(fields["capacity"], "capacity"),
        written_ms=_count(fields["written_ms"], "written_ms"),
        actors=tuple(_actor(actor, index) for index, actor in enumerate(actors)),
    )


def _actor(value: object, index: int) -> ActorLoad:
    where = f"actors[{index}]"
    fields = _object(value, ACTOR_LOAD_FIELDS, where)
    role = _text(fields["role"], f"{where}.role")
    if role not in _ROLES:
        raise ValueError(f"{where}.role: {role!r} is not one of {', '.join(_ROLES)}")
    state = _text(fields["state"], f"{where}.state")
    try:
        slot_state = SlotState(state)
    except ValueError:
        raise ValueError(f"{where}.state: {state!r} is not a slot state") from None
    gpus = fields["gpus"]
    if isinstance(gpus, bool) or not isinstance(gpus, int | float) or not 0 <= gpus < 1e6:
        raise ValueError(f"{where}.gpus: {gpus!r} is not a GPU share")
    return ActorLoad(role, _text(fields["name"], f"{where}.name"), slot_state,
                     _count(fields["running"], f"{where}.running"), float(gpus))


def _object(value: object, names: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: not an object")
    if missing := names - value.keys():
        raise ValueError(f"{where}: missing {', '.join(sorted(missing))}")
    if unknown := value.keys() - names:
        raise ValueError(f"{where}: unknown field {', '.join(sorted(unknown))}")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > 512:
        raise ValueError(f"{where}: not a string of at most 512 characters")
    return value


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: {value!r} is not a count")
    return value
