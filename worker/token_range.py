"""Reserved token-ID ranges: where an image's embedding rows live in a prompt's ID list."""

from __future__ import annotations

from dataclasses import dataclass

# exllamav2 treats every ID at or above this as an embedding index rather than a vocabulary ID.
RESERVED_ID_BASE = 1_000_000_000


@dataclass(frozen=True, slots=True, order=True)
class TokenRange:
    """A half-open range `[first, first + length)` of reserved token IDs within one epoch.

    IDs are unique for different contents only within an epoch: after the allocator's durable
    state is lost, a new, larger epoch starts and may reuse numbers. A generator that sees a
    larger epoch drops its cached pages first (see `worker.engines.epoch_gate`).
    """

    epoch: int
    first: int
    length: int

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise ValueError(f"a token range needs a positive length, got {self.length}")
        if self.first < 0:
            raise ValueError(f"a token range cannot start below zero, got {self.first}")

    @property
    def end(self) -> int:
        """One past the last ID."""
        return self.first + self.length

    def ids(self) -> range:
        return range(self.first, self.end)

    def overlaps(self, other: TokenRange) -> bool:
        """Whether the two ranges share an ID in the same epoch."""
        return self.epoch == other.epoch and self.first < other.end and other.first < self.end
