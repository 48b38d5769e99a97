"""The allocator's logic as a plain object, against a real redis-server."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.allocator.token_range_allocator import TokenRangeAllocator
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.redis_keys import RedisKeys
from worker.errors import InvalidAllocationError
from worker.token_range import TokenRange


def assert_disjoint(ranges: list[TokenRange]) -> None:
    for i, a in enumerate(ranges):
        for b in ranges[i + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_same_key_and_length_get_the_same_range(allocator_config: AllocatorConfig) -> None:
    allocator = TokenRangeAllocator(allocator_config)
    first = allocator.allocate_many([("img-a", 64)])[0]
    again = allocator.allocate_many([("img-b", 64), ("img-a", 64)])[1]
    assert again == first
    assert allocator.stats().num_reused == 1


def test_different_keys_and_lengths_never_overlap(allocator_config: AllocatorConfig) -> None:
    allocator = TokenRangeAllocator(allocator_config)
    requests = [(f"img-{i % 50}", 1 + (i * 37) % 300) for i in range(400)]
    ranges = allocator.allocate_many(requests)
    distinct = {request: r for request, r in zip(requests, ranges, strict=True)}
    assert_disjoint(list(distinct.values()))
    # Many more IDs than one chunk: blocks were reserved again along the way.
    assert allocator.stats().num_reservations > 1


def test_ranges_past_the_mark_are_never_handed_out(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    allocator = TokenRangeAllocator(allocator_config)
    client = redis_server.client()
    for i in range(200):
        token_range = allocator.allocate_many([(f"img-{i}", 97)])[0]
        stored_mark = int(client.hget(RedisKeys(allocator_config.namespace).allocator_state, "hwm"))
        assert token_range.end <= stored_mark


def test_evicted_key_gets_a_fresh_range(allocator_config: AllocatorConfig) -> None:
    allocator = TokenRangeAllocator(dataclasses.replace(allocator_config, max_keys=2))
    old = allocator.allocate_many([("a", 10), ("b", 10), ("c", 10)])
    assert allocator.stats().num_evicted == 1
    fresh = allocator.allocate_many([("a", 10)])[0]
    assert fresh != old[0]
    assert_disjoint([*old, fresh])
    assert allocator.stats().num_keys == 2


def test_recently_used_key_survives_eviction(allocator_config: AllocatorConfig) -> None:
    allocator = TokenRangeAllocator(dataclasses.replace(allocator_config, max_keys=2))
    a, _ = allocator.allocate_many([("a", 10), ("b", 10)])
    allocator.allocate_many([("a", 10), ("c", 10)])  # touches a, evicts b
    assert allocator.allocate_many([("a", 10)])[0] == a


def test_leases_are_disjoint_from_ranges(allocator_config: AllocatorConfig) -> None:
    allocator = TokenRangeAllocator(allocator_config)
    handed_out = [allocator.lease(512), *allocator.allocate_many([("x", 100)]), allocator.lease(7)]
    assert_disjoint(handed_out)


def test_first_registration_wins(allocator_config: AllocatorConfig) -> None:
    allocator = TokenRangeAllocator(allocator_config)
    lease_a, lease_b = allocator.lease(100), allocator.lease(100)
    mine_a = TokenRange(lease_a.epoch, lease_a.first, 10)
    mine_b = TokenRange(lease_b.epoch, lease_b.first, 10)
    assert allocator.register_many([("img", mine_a)]) == [mine_a]
    assert allocator.register_many([("img", mine_b)]) == [mine_a]
    assert allocator.allocate_many([("img", 10)]) == [mine_a]


def test_registration_from_an_old_epoch_gets_a_current_range(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    small = dataclasses.replace(allocator_config, chunk_size=100, lease_size=100)
    allocator = TokenRangeAllocator(small)
    lease = allocator.lease(100)
    redis_server.client().flushall()
    allocator.lease(100)  # the next reservation finds the state gone and opens a new epoch
    stale = TokenRange(lease.epoch, lease.first, 10)
    (canonical,) = allocator.register_many([("img", stale)])
    assert canonical.epoch > stale.epoch


def test_lost_state_forgets_ranges_of_the_old_epoch(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    small = dataclasses.replace(allocator_config, chunk_size=100, lease_size=100)
    allocator = TokenRangeAllocator(small)
    before = allocator.allocate_many([("img", 100)])[0]  # uses up the whole block
    redis_server.client().flushall()
    # Until it next reserves, the allocator cannot know; its old ranges are still valid then.
    assert allocator.allocate_many([("img", 100)])[0] == before
    other = allocator.allocate_many([("other", 100)])[0]  # reserves, finds the state gone
    after = allocator.allocate_many([("img", 100)])[0]
    assert other.epoch > before.epoch
    assert after.epoch == other.epoch
    assert after != before


@pytest.mark.parametrize("length", [0, -3, 4097])
def test_bad_lengths_are_refused(allocator_config: AllocatorConfig, length: int) -> None:
    allocator = TokenRangeAllocator(allocator_config)
    with pytest.raises(InvalidAllocationError, match="must hold"):
        allocator.allocate_many([("img", length)])
    with pytest.raises(InvalidAllocationError, match="must hold"):
        allocator.lease(length)


def test_repr_names_namespace_and_epoch(allocator_config: AllocatorConfig) -> None:
    allocator = TokenRangeAllocator(allocator_config)
    allocator.allocate_many([("img", 5)])
    text = repr(allocator)
    assert allocator_config.namespace in text
    assert f"epoch={allocator.stats().epoch}" in text
