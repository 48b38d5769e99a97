"""The cluster's one warm floor, on the session's local Ray: every scaler's share held by the
keeper actor, Ray asked for their union (what Ray's v1 autoscaler reads from the GCS's KV on
a local cluster), a share withdrawn on release, dropped once it is not renewed, and put back
by its owner's next renewal after the keeper restarts empty."""

from __future__ import annotations

import json
import uuid

import ray
from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.experimental.internal_kv import _internal_kv_get

from orchestrator.scaler.warm_floor import ResourceRequest, SharedWarmFloor, warm_floor_keeper
from tests.support.waiting import wait_for

GENERATORS = ResourceRequest(({"GPU": 0.5}, {"GPU": 0.5}), ({}, {}))
VISION = ResourceRequest(({"GPU": 1.0, "vision_gpu": 1.0},), ({"vlmq.io/pool": "vision"},))


def union_of_every_share() -> ResourceRequest:
    shares = ray.get(warm_floor_keeper().shares.remote())
    ordered = [shares[owner] for owner in sorted(shares)]
    return ResourceRequest(tuple(b for r in ordered for b in r.bundles),
                           tuple(s for r in ordered for s in r.label_selectors))


def asked_of_ray() -> list[dict[str, float]]:
    stored = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    found: list[dict[str, float]] = json.loads(stored)
    return found


def owners() -> set[str]:
    return set(ray.get(warm_floor_keeper().shares.remote()))


def test_two_scalers_hold_the_union_of_their_floors_and_each_withdraws_its_own(
    ray_cluster: None,
) -> None:
    tag = uuid.uuid4().hex[:6]
    generators, vision = SharedWarmFloor(f"a-{tag}"), SharedWarmFloor(f"b-{tag}")
    generators.request(GENERATORS)
    vision.request(VISION)
    shares = ray.get(warm_floor_keeper().shares.remote())
    assert (shares[f"a-{tag}"], shares[f"b-{tag}"]) == (GENERATORS, VISION)
    union = union_of_every_share()
    assert ray.get(warm_floor_keeper().requested.remote()) == union
    assert asked_of_ray() == list(union.bundles)  # neither replaced the other's
    assert all(bundle in asked_of_ray() for bundle in (*GENERATORS.bundles, *VISION.bundles))

    generators.release()
    assert f"a-{tag}" not in owners() and f"b-{tag}" in owners()
    assert asked_of_ray() == list(union_of_every_share().bundles)
    vision.release()
    assert not {f"a-{tag}", f"b-{tag}"} & owners()


def test_a_share_not_renewed_expires_and_a_restarted_keeper_gets_it_back(
    ray_cluster: None,
) -> None:
    tag = uuid.uuid4().hex[:6]
    forgotten = SharedWarmFloor(f"gone-{tag}", ttl_s=1.0)
    forgotten.request(VISION)
    assert f"gone-{tag}" in owners()
    wait_for(lambda: f"gone-{tag}" not in owners(), "the unrenewed share expired", 30)
    assert asked_of_ray() == list(union_of_every_share().bundles)

    kept = SharedWarmFloor(f"kept-{tag}", ttl_s=3.0)
    kept.request(GENERATORS)
    ray.kill(warm_floor_keeper(), no_restart=False)  # Ray restarts it, empty
    wait_for(lambda: f"kept-{tag}" not in owners(), "the keeper restarted empty", 60)
    # Its owner's renewal (due after a third of the TTL) puts the share back.
    def renewed() -> bool:
        kept.request(GENERATORS)  # what the scaler does every step
        return f"kept-{tag}" in owners()

    wait_for(renewed, "the renewal restored the share", 30)
    kept.release()
    assert f"kept-{tag}" not in owners()
