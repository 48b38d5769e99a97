"""Jobs per second over a sliding window, and the time left at that rate."""

from __future__ import annotations

from collections import deque


class RateWindow:
    """Samples of (time, jobs finished so far); the rate is measured over the last `span_s`.

    A window rather than the whole run, so the rate (and the ETA) follows a batch that speeds
    up as servers join or slows down as they leave.
    """

    def __init__(self, span_s: float = 10.0) -> None:
        if not span_s > 0:
            raise ValueError(f"span_s must be positive, got {span_s}")
        self.span_s = span_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now_s: float, finished: int) -> None:
        if self._samples and now_s < self._samples[-1][0]:
            raise ValueError("samples must come in time order")
        self._samples.append((now_s, finished))
        # Keep one sample at or before the window's start, so the rate spans the whole window.
        while len(self._samples) > 2 and self._samples[1][0] <= now_s - self.span_s:
            self._samples.popleft()

    @property
    def rate(self) -> float | None:
        """Jobs finished per second in the window; None until two samples apart in time."""
        if len(self._samples) < 2:
            return None
        (first_s, first), (last_s, last) = self._samples[0], self._samples[-1]
        if last_s <= first_s:
            return None
        return max(0, last - first) / (last_s - first_s)

    def eta_s(self, remaining: int) -> float | None:
        """Seconds until `remaining` more jobs finish at the rate; None when it is unknown."""
        if remaining <= 0:
            return 0.0
        rate = self.rate
        return remaining / rate if rate else None
