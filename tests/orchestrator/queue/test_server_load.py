"""A server's published load: its JSON schema read defensively, and a real server writing it.

The server (on a real redis-server, with the scripted runner of the queue's declared seam)
writes what it holds every reap pass, under a key that expires and that it deletes when it
stops; `Client.server_loads` reads it for every live server and says why where it cannot.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.pipeline.actor_load import ActorLoad, SlotState
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.server_load import (
    LOAD_TTL_S,
    MAX_LOAD_BYTES,
    ServerLoad,
    decode_server_load,
    encode_server_load,
)
from tests.orchestrator.queue.conftest import QUEUE, QueueRig
from tests.support.waiting import wait_for

LOAD = ServerLoad(
    consumer="host:42:abcd1234", held=3, capacity=16, written_ms=1_700_000_000_000,
    actors=(
        ActorLoad("vision", "vlmq-default-vision-0", SlotState.OPEN, 1, 0.5),
        ActorLoad("generator", "vlmq-default-generator-0", SlotState.DRAINING, 2, 0.5),
        ActorLoad("generator", "vlmq-default-generator-1", SlotState.STARTING, 0, 1.0),
    ),
)


def as_object() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(encode_server_load(LOAD))
    return value


def test_a_load_decodes_back_equal_from_bytes_or_text() -> None:
    encoded = encode_server_load(LOAD)
    assert decode_server_load(encoded) == LOAD
    assert decode_server_load(encoded.decode()) == LOAD
    assert LOAD.of_role("generator") == LOAD.actors[1:]
    assert as_object()["v"] == 1  # versioned, for readers in other languages


def changed(path: tuple[str | int, ...], value: object) -> bytes:
    """The encoded load with the field at `path` set to `value` (a missing one if `value` is
    the `...` marker: deleted)."""
    document = as_object()
    target: Any = document
    for step in path[:-1]:
        target = target[step]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(("raw", "complaint"), [
    (b"\xff\xfe", "not JSON"),
    (b"{\"v\": 1", "not JSON"),
    (b"[]", "the load: not an object"),
    (changed(("v",), 2), "version 2"),
    (changed(("held",), ...), "missing held"),
    (changed(("extra",), 1), "unknown field extra"),
    (changed(("held",), -1), "held: -1 is not a count"),
    (changed(("held",), True), "held: True is not a count"),
    (changed(("capacity",), 1.5), "capacity: 1.5 is not a count"),
    (changed(("consumer",), 7), "consumer: not a string"),
    (changed(("consumer",), "x" * 513), "consumer: not a string of at most 512"),
    (changed(("actors",), {}), "actors: not a list"),
    (changed(("actors", 0), "vision"), "actors[0]: not an object"),
    (changed(("actors", 1, "role"), "allocator"), "actors[1].role: 'allocator' is not one"),
    (changed(("actors", 1, "state"), "asleep"), "actors[1].state: 'asleep' is not a slot"),
    (changed(("actors", 2, "gpus"), "1"), "actors[2].gpus: '1' is not a GPU share"),
    (changed(("actors", 2, "gpus"), -0.5), "actors[2].gpus: -0.5 is not a GPU share"),
    (changed(("actors", 0, "running"), None), "actors[0].running: None is not a count"),
    (changed(("actors", 0, "name"), ...), "actors[0]: missing name"),
    (b" " * (MAX_LOAD_BYTES + 1), "more than the"),
])
def test_a_value_that_is_not_the_schema_is_refused_saying_what_is_wrong(
    raw: bytes, complaint: str
) -> None:
    with pytest.raises(ValueError) as refused:
        decode_server_load(raw)
    assert complaint in str(refused.value)


def test_a_server_publishes_what_it_holds_and_takes_itself_off_when_it_stops(rig: QueueRig) -> None:
    server = rig.start_server()
    consumer = server.server.config.consumer
    key = rig.client.keys.queue(QUEUE).server_load(consumer)
    rig.client.submit_many([JobSpec(f"slow-{i}", QUEUE, "sleep:30") for i in range(3)])

    def published() -> ServerLoad | None:
        loads = rig.client.server_loads(QUEUE, rig.client.queue_status(QUEUE).servers)
        return loads[0].load if loads else None

    wait_for(lambda: (load := published()) is not None and load.held == 3,
             "the load shows the 3 jobs held")
    load = published()
    assert load is not None
    assert (load.consumer, load.capacity, load.actors) == (consumer, 8, ())
    ttl_ms = rig.client.redis.pttl(key)
    assert 0 < ttl_ms <= LOAD_TTL_S * 1000  # a server killed with -9 leaves nothing for long

    rig.servers.remove(server)
    assert consumer in rig.client.queue_status(QUEUE).servers
    server.stop()
    assert rig.client.redis.exists(key) == 0
    assert consumer not in rig.client.queue_status(QUEUE).servers  # it said it was going


def test_a_live_server_without_a_readable_load_is_shown_with_the_reason(rig: QueueRig) -> None:
    keys = rig.client.keys.queue(QUEUE)
    rig.client.redis.set(keys.server_load("garbled"), b"{not json")
    rig.client.redis.set(keys.server_load("written"), encode_server_load(LOAD))
    loads = rig.client.server_loads(QUEUE, ["silent", "garbled", "written"])
    assert [(p.consumer, p.load is None) for p in loads] == [
        ("silent", True), ("garbled", True), ("written", False)
    ]
    assert loads[0].problem == "nothing published"
    assert loads[1].problem.startswith("unreadable: not JSON")
    assert loads[2].load == LOAD
    assert rig.client.server_loads(QUEUE, []) == []
