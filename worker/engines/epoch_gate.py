"""The generator-side half of the epoch rule.

Token ranges are unique per epoch only: after the allocator's state is lost, a new (larger)
epoch reuses ID numbers. A generator keeps prefix-cache pages hashed by token IDs, so before it
runs the first request of a newer epoch it must drop every cached page that holds reserved IDs,
and it must refuse requests of older epochs from then on.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from worker.errors import StaleEpochError
from worker.token_range import TokenRange


class Admission(enum.StrEnum):
    CURRENT = "current"  # same epoch as the cached pages: run it
    ADVANCED = "advanced"  # newer epoch: drop cached image pages, then run it


class EpochGate:
    def __init__(self) -> None:
        self.current_epoch = 0  # 0 until the first request with images

    def admit(self, ranges: Iterable[TokenRange]) -> Admission:
        """Admit a request by the epochs of its ranges; raise `StaleEpochError` if it is stale."""
        epochs = {token_range.epoch for token_range in ranges}
        if not epochs:
            return Admission.CURRENT
        if len(epochs) > 1 or min(epochs) < self.current_epoch:
            raise StaleEpochError(
                f"request holds ranges of epochs {sorted(epochs)}; generator is at "
                f"{self.current_epoch}"
            )
        (epoch,) = epochs
        if epoch == self.current_epoch:
            return Admission.CURRENT
        self.current_epoch = epoch
        return Admission.ADVANCED
