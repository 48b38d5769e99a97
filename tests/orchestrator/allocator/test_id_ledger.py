"""The durable high-water mark in Redis: reservations, persistence, and the epoch rules."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from pathlib import Path

import pytest

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.allocator.id_ledger import EpochChange, IdLedger
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.redis_keys import RedisKeys
from worker.errors import AllocatorStateUnavailableError


def stored_state(server: PrivateRedisServer, config: AllocatorConfig) -> dict[bytes, bytes]:
    state: dict[bytes, bytes] = server.client().hgetall(RedisKeys(config.namespace).allocator_state)
    return state


def test_reservations_are_contiguous_and_disjoint(allocator_config: AllocatorConfig) -> None:
    ledger = IdLedger(allocator_config)
    blocks = [ledger.reserve(n).block for n in (10, 1, 4096, 7)]
    assert blocks[0].first == allocator_config.id_base
    for earlier, later in itertools.pairwise(blocks):
        assert later.first == earlier.end
        assert later.epoch == earlier.epoch


def test_mark_is_persisted_before_the_block_is_returned(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    block = IdLedger(allocator_config).reserve(100).block
    state = stored_state(redis_server, allocator_config)
    assert int(state[b"hwm"]) == block.end
    assert int(state[b"epoch"]) == block.epoch


def test_a_second_ledger_continues_above_the_first(allocator_config: AllocatorConfig) -> None:
    first = IdLedger(allocator_config).reserve(50).block
    second = IdLedger(allocator_config).reserve(50).block
    assert second.epoch == first.epoch
    assert second.first >= first.end


def test_fresh_state_opens_an_epoch_from_the_redis_clock(
    allocator_config: AllocatorConfig,
) -> None:
    before_ms = int(time.time() * 1000) - 5_000
    reservation = IdLedger(allocator_config).reserve(10)
    assert reservation.reason is EpochChange.STATE_MISSING
    assert reservation.block.epoch > before_ms


def test_lost_state_opens_a_newer_epoch(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    ledger = IdLedger(allocator_config)
    old = ledger.reserve(10).block
    redis_server.client().flushall()
    new = ledger.reserve(10)
    assert new.reason is EpochChange.STATE_MISSING
    assert new.block.epoch > old.epoch
    assert new.block.first == allocator_config.id_base


def test_epoch_grows_even_when_the_clock_is_behind(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    # A state restored with an epoch from the future (another server's clock) must still be
    # followed by a larger epoch when lost again, because this ledger remembers what it saw.
    keys = RedisKeys(allocator_config.namespace)
    far_future = int(time.time() * 1000) + 10**9
    redis_server.client().hset(keys.allocator_state, mapping={"epoch": far_future, "hwm": 5})
    ledger = IdLedger(allocator_config)
    assert ledger.reserve(10).block.epoch == far_future
    redis_server.client().flushall()
    assert ledger.reserve(10).block.epoch == far_future + 1


def test_rolled_back_mark_opens_a_new_epoch(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    ledger = IdLedger(allocator_config)
    old = ledger.reserve(1000).block
    # As if Redis came back from a snapshot taken before the last reservation.
    redis_server.client().hset(
        RedisKeys(allocator_config.namespace).allocator_state, "hwm", old.first + 10
    )
    new = ledger.reserve(10)
    assert new.reason is EpochChange.STATE_REGRESSED
    assert new.block.epoch > old.epoch


def test_full_region_opens_a_new_epoch(allocator_config: AllocatorConfig) -> None:
    small = dataclasses.replace(
        allocator_config, id_limit=allocator_config.id_base + 100, chunk_size=50, lease_size=50
    )
    ledger = IdLedger(small)
    blocks = [ledger.reserve(40) for _ in range(3)]
    assert [r.reason for r in blocks[1:]] == [EpochChange.CONTINUED, EpochChange.REGION_FULL]
    assert blocks[2].block.epoch > blocks[1].block.epoch
    assert blocks[2].block.first == small.id_base
    assert all(r.block.end <= small.id_limit for r in blocks)


def test_restart_of_a_persisting_redis_keeps_the_epoch(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    ledger = IdLedger(allocator_config)
    before = ledger.reserve(100).block
    redis_server.restart()
    after = ledger.reserve(100)
    assert after.reason is EpochChange.CONTINUED
    assert (after.block.epoch, after.block.first) == (before.epoch, before.end)


def test_restart_of_a_volatile_redis_opens_a_new_epoch(tmp_path: Path) -> None:
    server = PrivateRedisServer(tmp_path, persist_every_write=False)
    server.start()
    try:
        config = AllocatorConfig(redis_url=server.url, redis_retry_seconds=2.0)
        ledger = IdLedger(config)
        assert ledger.persists_writes() is False
        before = ledger.reserve(100).block
        server.restart()
        after = ledger.reserve(100)
        assert after.reason is EpochChange.STATE_MISSING
        assert after.block.epoch > before.epoch
    finally:
        server.stop()


def test_persistence_is_reported(allocator_config: AllocatorConfig) -> None:
    assert IdLedger(allocator_config).persists_writes() is True


def test_unreachable_redis_is_a_typed_error(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    ledger = IdLedger(dataclasses.replace(allocator_config, redis_retry_seconds=0.5))
    ledger.reserve(10)
    redis_server.stop()
    with pytest.raises(AllocatorStateUnavailableError, match="unreachable"):
        ledger.reserve(10)
    redis_server.start()
    assert ledger.reserve(10).reason is EpochChange.CONTINUED


def test_redis_coming_back_within_the_retry_window_is_waited_for(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    ledger = IdLedger(dataclasses.replace(allocator_config, redis_retry_seconds=20.0))
    before = ledger.reserve(10).block
    redis_server.stop()
    restarter = threading.Timer(0.5, redis_server.start)
    restarter.start()
    after = ledger.reserve(10).block
    restarter.join()
    assert (after.epoch, after.first) == (before.epoch, before.end)


@pytest.mark.parametrize("num_ids", [0, -1])
def test_nonpositive_reservation_is_refused(
    allocator_config: AllocatorConfig, num_ids: int
) -> None:
    with pytest.raises(ValueError, match="cannot reserve"):
        IdLedger(allocator_config).reserve(num_ids)


def test_volatile_redis_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = PrivateRedisServer(tmp_path, persist_every_write=False)
    server.start()
    try:
        ledger = IdLedger(AllocatorConfig(redis_url=server.url))
        with caplog.at_level("WARNING", logger="orchestrator.allocator.id_ledger"):
            ledger.reserve(10)
            ledger.reserve(10)
        warnings = [r for r in caplog.records if "does not log every write" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        server.stop()
