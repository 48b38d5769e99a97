"""The allocator's durable state: the token-ID high-water mark and its epoch, kept in Redis.

Every ID below the stored high-water mark may have been handed out in the stored epoch. A
reservation moves the mark forward in one atomic script *before* any ID past the old mark is
handed out, so no crash of the allocator can hand out an ID twice within an epoch.

A new epoch starts, at the bottom of the region again, when
- the state is missing (a fresh Redis, a FLUSHALL, a restart of a Redis that does not persist),
- the state went backwards (a restore from an older snapshot: IDs past it may be in use), or
- the region is used up.
Epochs only grow: a new one is the Redis server's clock in milliseconds, or one more than any
epoch this ledger has seen, whichever is larger. Generators drop cached pages of older epochs.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import redis

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.redis_keys import RedisKeys
from worker.errors import AllocatorStateUnavailableError
from worker.token_range import TokenRange

log = logging.getLogger(__name__)

T = TypeVar("T")

# KEYS[1]: the state hash. ARGV: ids wanted, id_base, id_limit, highest epoch the caller has
# seen, the caller's own mark in that epoch. Integers are formatted with %d because Lua's
# default number formatting would print large values in exponent form.
_RESERVE_SCRIPT = """
local wanted = tonumber(ARGV[1])
local id_base = tonumber(ARGV[2])
local id_limit = tonumber(ARGV[3])
local seen_epoch = tonumber(ARGV[4])
local seen_mark = tonumber(ARGV[5])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function next_epoch(floor)
    if now_ms > floor then return now_ms end
    return floor + 1
end
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch'))
local mark = tonumber(redis.call('HGET', KEYS[1], 'hwm'))
local reason = 'continued'
if epoch == nil or mark == nil then
    epoch = next_epoch(seen_epoch)
    mark = id_base
    reason = 'state_missing'
elseif epoch < seen_epoch or (epoch == seen_epoch and mark < seen_mark) then
    epoch = next_epoch(math.max(epoch, seen_epoch))
    mark = id_base
    reason = 'state_regressed'
elseif mark + wanted > id_limit then
    epoch = next_epoch(epoch)
    mark = id_base
    reason = 'region_full'
end
redis.call('HSET', KEYS[1], 'epoch', string.format('%d', epoch),
           'hwm', string.format('%d', mark + wanted))
return {string.format('%d', epoch), string.format('%d', mark), reason}
"""


class EpochChange(enum.StrEnum):
    """Why a reservation came from a different epoch than the one before."""

    CONTINUED = "continued"
    STATE_MISSING = "state_missing"
    STATE_REGRESSED = "state_regressed"
    REGION_FULL = "region_full"


@dataclass(frozen=True, slots=True)
class Reservation:
    block: TokenRange  # IDs now owned by the caller, persisted as used
    reason: EpochChange  # CONTINUED unless this reservation opened a new epoch


class IdLedger:
    """Reserves blocks of reserved token IDs against the high-water mark stored in Redis."""

    def __init__(self, config: AllocatorConfig, client: redis.Redis | None = None) -> None:
        self.config = config
        self.keys = RedisKeys(config.namespace)
        self._redis = client or config.redis.sync_client(socket_timeout=5.0)
        self._script = self._redis.register_script(_RESERVE_SCRIPT)
        # The highest epoch and the mark reached in it that this ledger has seen: if Redis
        # later shows less, its state was rolled back and the epoch must move on.
        self.seen_epoch = 0
        self.seen_mark = 0
        self._warned_about_persistence = False

    def reserve(self, num_ids: int) -> Reservation:
        if not 0 < num_ids <= self.config.id_span:
            raise ValueError(f"cannot reserve {num_ids} IDs from a region of {self.config.id_span}")
        reply = self._with_retries(
            lambda: self._script(
                keys=[self.keys.allocator_state],
                args=[num_ids, self.config.id_base, self.config.id_limit,
                      self.seen_epoch, self.seen_mark],
            )
        )
        epoch_text, first_text, reason_text = cast(list[bytes], reply)
        block = TokenRange(epoch=int(epoch_text), first=int(first_text), length=num_ids)
        reason = EpochChange(reason_text.decode())
        if reason is not EpochChange.CONTINUED and self.seen_epoch:
            log.warning("token-ID epoch %d -> %d (%s)", self.seen_epoch, block.epoch, reason)
        self.seen_epoch, self.seen_mark = block.epoch, block.end
        if not self._warned_about_persistence:
            self._warned_about_persistence = True
            if self.persists_writes() is False:
                log.warning(
                    "Redis at %s does not log every write (appendonly yes, appendfsync always): "
                    "a Redis restart opens a new token-ID epoch, and generators drop cached "
                    "image pages",
                    self.config.redis.masked_url,
                )
        return Reservation(block=block, reason=reason)

    def persists_writes(self) -> bool | None:
        """Whether Redis logs every write to disk (None where CONFIG is not allowed).

        Without it a Redis restart may roll back the mark; that is caught (a new epoch starts)
        while this ledger is alive, but not across a simultaneous restart of both.
        """
        try:
            appendonly = cast(dict[str, str], self._redis.config_get("appendonly"))
            fsync = cast(dict[str, str], self._redis.config_get("appendfsync"))
        except redis.ResponseError:
            return None
        return appendonly.get("appendonly") == "yes" and fsync.get("appendfsync") == "always"

    def _with_retries(self, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.config.redis_retry_seconds
        delay = 0.05
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if time.monotonic() >= deadline:
                    raise AllocatorStateUnavailableError(
                        f"Redis at {self.config.redis.masked_url} unreachable for "
                        f"{self.config.redis_retry_seconds:.0f}s; no new token IDs issued: {error}"
                    ) from error
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
