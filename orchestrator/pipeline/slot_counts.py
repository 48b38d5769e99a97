"""How the slots of one role (vision, generator) stand, as the scaler reads them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SlotCounts:
    open: int  # take requests (some may be down, restarting)
    starting: int  # started, not answering yet: they take requests once they do
    draining: int  # take no new requests; killed once their running ones end
    gone: int  # given up on (dead for good, or down past the restart deadline)

    @property
    def serving(self) -> int:
        """What the role is heading for: the open ones and those starting."""
        return self.open + self.starting


@dataclass(frozen=True, slots=True)
class PoolCounts:
    vision: SlotCounts
    generators: SlotCounts
