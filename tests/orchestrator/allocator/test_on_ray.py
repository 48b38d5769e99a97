"""The allocator as a named Ray actor: many processes at once, and every kind of restart.

Every test checks the one invariant that matters: two different images never get ranges that
share an ID in the same epoch. Ranges are collected from all processes and checked pairwise.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import ray

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.allocator.handle import get_or_start_allocator
from orchestrator.allocator.range_client import ActorRangeClient, LeasedRangeClient
from orchestrator.allocator.token_range_allocator import AllocatorStats
from orchestrator.private_redis import PrivateRedisServer
from tests.support.waiting import wait_for
from worker.engines.epoch_gate import Admission, EpochGate
from worker.errors import AllocatorStateUnavailableError, StaleEpochError
from worker.token_range import TokenRange

Handout = tuple[str, int, TokenRange]  # image key, length asked for, range received

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture
def config(allocator_config: AllocatorConfig) -> Iterator[AllocatorConfig]:
    # Small leases and chunks, so the runs below cross many lease and reservation boundaries.
    small = dataclasses.replace(
        allocator_config, chunk_size=2048, lease_size=256, sync_every=16, redis_retry_seconds=15
    )
    yield small
    ray.kill(get_or_start_allocator(small), no_restart=True)


def length_for(key: str) -> int:
    """A stable number of rows per image, as a vision tower would give for its size."""
    return 1 + sum(key.encode()) % 200


class ProgressBoard:
    """The workers' allocations, counted as they happen, and the word to stop."""

    def __init__(self) -> None:
        self._num_allocations = 0
        self._is_stopped = False

    def allocated(self) -> bool:
        """Count one allocation; answer whether to go on."""
        self._num_allocations += 1
        return not self._is_stopped

    def num_allocations(self) -> int:
        return self._num_allocations

    def stop(self) -> None:
        self._is_stopped = True


@contextmanager
def workers_until_stopped(config: AllocatorConfig, num_workers: int) -> Iterator[tuple[Any, Any]]:
    """(board, worker refs): workers that allocate until the board is stopped, which happens on
    leaving the block, also when the test fails in it. The board takes no CPU."""
    board_class: Any = ray.remote(num_cpus=0)(ProgressBoard)
    board = board_class.remote()
    try:
        yield board, run_workers(config, num_workers, board=board)
    finally:
        ray.get(board.stop.remote())


@ray.remote(num_cpus=1)
def allocate_in_worker(
    config: AllocatorConfig, keys: list[str], leased: bool, board: Any = None
) -> tuple[int, list[Handout]]:
    """Allocate every key once. With a board: report each allocation to it, and after the keys
    go on with new keys of its own until the board says stop, so the run lasts as long as the
    test needs to see allocations before and after what it breaks."""
    allocator = get_or_start_allocator(config)
    client = LeasedRangeClient(allocator, config) if leased else ActorRangeClient(allocator)
    handouts = []
    more = (f"{uuid.uuid4().hex[:8]}-more-{i}" for i in itertools.count())
    for index, key in enumerate(itertools.chain(keys, more) if board is not None else keys):
        (token_range,) = client.allocate_many([(key, length_for(key))])
        handouts.append((key, length_for(key), token_range))
        if board is not None and not ray.get(board.allocated.remote()) and index >= len(keys):
            break
    if isinstance(client, LeasedRangeClient):
        client.sync()
        # After a sync every client answers the canonical range for keys others also had.
        for key in keys:
            (token_range,) = client.allocate_many([(key, length_for(key))])
            handouts.append((key, length_for(key), token_range))
    return os.getpid(), handouts


def assert_no_shared_ids(handouts: list[Handout]) -> int:
    """Check every pair of distinct ranges; return how many distinct ranges there were."""
    owner: dict[TokenRange, tuple[str, int]] = {}
    for key, length, token_range in handouts:
        assert owner.setdefault(token_range, (key, length)) == (key, length), token_range
        assert token_range.length == length
    ranges = list(owner)
    epoch = np.array([r.epoch for r in ranges])
    first = np.array([r.first for r in ranges])
    end = np.array([r.end for r in ranges])
    overlap = (
        (epoch[:, None] == epoch[None, :])
        & (first[:, None] < end[None, :])
        & (first[None, :] < end[:, None])
    )
    np.fill_diagonal(overlap, False)
    pairs = np.argwhere(overlap)
    assert len(pairs) == 0, [(ranges[i], ranges[j]) for i, j in pairs[:5]]
    return len(ranges)


def run_workers(config: AllocatorConfig, num_workers: int, **options: Any) -> list[Any]:
    """Start workers; each gets keys of its own plus keys every worker shares."""
    shared = [f"shared-{i}" for i in range(20)]
    return [
        allocate_in_worker.remote(
            config, [f"w{w}-img{i}" for i in range(120)] + shared, w % 4 != 3, **options
        )
        for w in range(num_workers)
    ]


def collect(refs: list[Any]) -> tuple[set[int], list[Handout]]:
    results: list[tuple[int, list[Handout]]] = ray.get(refs)
    return {pid for pid, _ in results}, [h for _, handouts in results for h in handouts]


def wait_until_name_is_free(config: AllocatorConfig) -> None:
    """Ray releases a killed actor's name a moment later; a new orchestrator starts after."""

    def is_free() -> bool:
        try:
            ray.get_actor(config.actor_name, namespace=config.ray_namespace)
        except ValueError:
            return True
        return False

    wait_for(is_free, f"{config.actor_name} released after it was killed", timeout_s=30)


def stats_of(config: AllocatorConfig) -> AllocatorStats:
    stats: AllocatorStats = ray.get(get_or_start_allocator(config).stats.remote())
    return stats


def wait_for_allocations(board: Any, count: int = 100) -> None:
    """Until the workers have made `count` more allocations: they are under way."""
    start: int = ray.get(board.num_allocations.remote())
    wait_for(
        lambda: ray.get(board.num_allocations.remote()) >= start + count,
        f"{count} more allocations by the workers",
    )


def wait_for_an_actor_serving(config: AllocatorConfig, other_than: int) -> AllocatorStats:
    """Until an allocator process other than `other_than` has served the running workers."""

    def serving() -> bool:
        stats = stats_of(config)  # waits for Ray to restart a killed actor
        return stats.pid != other_than and stats.num_allocated + stats.num_leased > 0

    wait_for(serving, f"an allocator other than pid {other_than} serving the workers")
    return stats_of(config)


def test_concurrent_processes_never_share_ids(config: AllocatorConfig) -> None:
    pids, handouts = collect(run_workers(config, num_workers=8))
    assert len(pids) >= 2, "the workers should have run in several processes"
    assert assert_no_shared_ids(handouts) > 8 * 120
    # Shared keys converge: after the syncs, every leasing worker answers the same range.
    for i in range(20):
        late_answers = {r for key, _, r in handouts[-20:] if key == f"shared-{i}"}
        assert len(late_answers) == 1
    assert stats_of(config).num_leased > 8


def test_killed_actor_comes_back_without_reusing_ids(config: AllocatorConfig) -> None:
    # Each kill lands while the workers are seen allocating, and the workers go on until the
    # restarted actor has served them: ranges from before and after every kill meet below.
    with workers_until_stopped(config, num_workers=4) as (board, refs):
        wait_for_allocations(board)
        first_pid = stats_of(config).pid
        ray.kill(get_or_start_allocator(config), no_restart=False)
        second_pid = wait_for_an_actor_serving(config, other_than=first_pid).pid
        wait_for_allocations(board)
        os.kill(second_pid, signal.SIGKILL)
        third_pid = wait_for_an_actor_serving(config, other_than=second_pid).pid
        wait_for_allocations(board)
    _, handouts = collect(refs)
    assert assert_no_shared_ids(handouts) > 4 * 120
    assert len({first_pid, second_pid, third_pid}) == 3
    assert len({r.epoch for _, _, r in handouts}) == 1  # Redis kept the state: same epoch


def test_restarted_orchestrator_continues_above_the_stored_mark(
    config: AllocatorConfig,
) -> None:
    _, before = collect(run_workers(config, num_workers=2))
    ray.kill(get_or_start_allocator(config), no_restart=True)  # gone for good
    wait_until_name_is_free(config)
    _, after = collect(run_workers(config, num_workers=2))  # a new actor, found by name
    assert assert_no_shared_ids(before + after) > 0
    highest_before = max(r.end for _, _, r in before)
    fresh_after = {r for _, _, r in after} - {r for _, _, r in before}
    assert fresh_after and min(r.first for r in fresh_after) >= highest_before


def test_redis_restart_mid_run(redis_server: PrivateRedisServer, config: AllocatorConfig) -> None:
    with workers_until_stopped(config, num_workers=4) as (board, refs):
        wait_for_allocations(board)
        reservations = stats_of(config).num_reservations
        redis_server.restart()
        # The workers go on until the allocator has written to the restarted Redis.
        wait_for(
            lambda: stats_of(config).num_reservations > reservations,
            "a reservation in the restarted Redis",
        )
        wait_for_allocations(board)
    _, handouts = collect(refs)
    assert assert_no_shared_ids(handouts) > 4 * 120
    assert len({r.epoch for _, _, r in handouts}) == 1  # it persists every write


def test_flushed_redis_opens_a_new_epoch_that_generators_enforce(
    redis_server: PrivateRedisServer, config: AllocatorConfig
) -> None:
    allocator = get_or_start_allocator(config)
    client = LeasedRangeClient(allocator, config)
    before = [client.allocate(f"img-{i}", 100) for i in range(30)]
    redis_server.client().flushall()
    # Enough new images to use up the lease and the actor's block: both learn of the loss.
    after = [client.allocate(f"new-{i}", 100) for i in range(60)]
    same_image_again = client.allocate("img-0", 100)

    old_epoch, new_epoch = before[0].epoch, after[-1].epoch
    assert new_epoch > old_epoch
    assert same_image_again.epoch == new_epoch and same_image_again != before[0]
    handouts = [(f"img-{i}", 100, r) for i, r in enumerate(before)]
    handouts += [(f"new-{i}", 100, r) for i, r in enumerate(after)]
    handouts.append(("img-0", 100, same_image_again))
    assert_no_shared_ids(handouts)
    # The numbers themselves are reused across the epochs ...
    new_ranges = [r for r in after if r.epoch == new_epoch]
    assert any(a.first < b.end and b.first < a.end for a in before for b in new_ranges)
    # ... which is safe because a generator drops its image pages on entering the new epoch
    # and refuses requests of the old one from then on.
    gate = EpochGate()
    assert gate.admit([before[0]]) is Admission.ADVANCED
    assert gate.admit([before[1]]) is Admission.CURRENT
    assert gate.admit([new_ranges[0]]) is Admission.ADVANCED
    with pytest.raises(StaleEpochError, match=str(old_epoch)):
        gate.admit([before[2]])


def test_unreachable_redis_reaches_the_client_as_a_typed_error(
    redis_server: PrivateRedisServer, allocator_config: AllocatorConfig
) -> None:
    impatient = dataclasses.replace(
        allocator_config, chunk_size=256, lease_size=256, redis_retry_seconds=0.5
    )
    allocator = get_or_start_allocator(impatient)
    try:
        client = ActorRangeClient(allocator)
        client.allocate_many([("a", 256)])  # uses up the first block
        redis_server.stop()
        with pytest.raises(AllocatorStateUnavailableError, match="no new token IDs"):
            client.allocate_many([("b", 10)])
        redis_server.start()
        # The actor survived the error and goes on in the same epoch.
        (after,) = client.allocate_many([("b", 10)])
        assert after.epoch == stats_of(impatient).epoch
    finally:
        ray.kill(allocator, no_restart=True)


def test_a_refreshed_client_moves_to_the_new_epoch(
    redis_server: PrivateRedisServer, config: AllocatorConfig
) -> None:
    allocator = get_or_start_allocator(config)
    behind, other = LeasedRangeClient(allocator, config), LeasedRangeClient(allocator, config)
    old = behind.allocate("img", 100)
    redis_server.client().flushall()
    # Another client's new images make the actor reserve again and open the new epoch.
    newest = max(other.allocate(f"new-{i}", 100).epoch for i in range(60))
    assert newest > old.epoch
    assert behind.allocate("img", 100) == old  # it cannot know yet
    behind.refresh()  # a generator refused its range as stale
    fresh = behind.allocate("img", 100)
    assert fresh.epoch == newest and fresh != old
