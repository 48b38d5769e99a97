"""What the test's own process (the Ray driver) holds: objects by location, features unpickled.

Ray returns a result of less than `max_direct_call_object_size` (100 KiB by default in Ray 2.60,
`RAY_max_direct_call_object_size`) inline: its bytes go into the caller's, the owner's, own
memory store, and the owner forwards them inline to every task that takes the reference. Only
larger results live in a node's object store, where a reader on the node maps them without
the driver. So "the driver holds references only" is checked by where the driver's objects are,
not only by what it unpickled: an inlined feature passes through the driver unread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray

from worker.engines import num_features_received


@dataclass(frozen=True, slots=True)
class HeldObject:
    object_id: str
    num_bytes: int  # serialized size
    in_object_store: bool  # on a node's object store; False: inline in the driver's memory


def _core_worker() -> Any:
    return ray._private.worker.global_worker.core_worker  # type: ignore[attr-defined]


def objects_held_here(min_bytes: int) -> list[HeldObject]:
    """Every object this process holds a reference to and owns, of at least `min_bytes`."""
    refs: list[ray.ObjectRef[Any]] = [
        ray.ObjectRef(bytes.fromhex(object_id.decode()))
        for object_id in _core_worker().get_all_reference_counts()
    ]
    locations = ray.experimental.get_object_locations(refs)
    held = []
    for ref, location in locations.items():
        size = location.get("object_size") or 0
        if size >= min_bytes:
            held.append(HeldObject(ref.hex(), size, bool(location["node_ids"])))
    return held


def memory_store_bytes_here() -> int:
    """Bytes of object values in this process's own memory store (inlined results)."""
    return int(_core_worker().get_local_memory_store_bytes_used())


@dataclass(slots=True)
class FeaturesReceived:
    count: int = 0  # ImageFeatures unpickled in this process inside the `with` block


@contextmanager
def features_received_here() -> Iterator[FeaturesReceived]:
    """Count what this process unpickles in the block alone; the counter itself is per process,
    so an absolute reading would carry whatever earlier tests received."""
    received = FeaturesReceived()
    before = num_features_received()
    try:
        yield received
    finally:
        received.count = num_features_received() - before
