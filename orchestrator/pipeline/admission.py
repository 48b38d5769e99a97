"""How many jobs run at once: a semaphore whose limit can change while callers wait.

The limit follows the generators that take requests (the scaler adds and drains them), so the
pipeline's capacity grows with its pool. Waiters are admitted in order; a waiter cancelled
after it was admitted gives its place back.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.holders = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.holders < self.limit and not self._waiters:
            self.holders += 1
            return
        admitted = asyncio.get_running_loop().create_future()
        self._waiters.append(admitted)
        try:
            await admitted  # resolved by _admit, which counts this waiter as a holder
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():
                self.release()
            elif admitted in self._waiters:
                self._waiters.remove(admitted)
            raise

    def release(self) -> None:
        self.holders -= 1
        self._admit()

    def set_limit(self, limit: int) -> None:
        """A lower limit admits no one until enough holders leave; none is turned out."""
        self.limit = limit
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self.holders < self.limit:
            admitted = self._waiters.popleft()
            if not admitted.done():
                admitted.set_result(None)
                self.holders += 1
