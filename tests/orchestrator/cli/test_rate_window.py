"""The watch's rate and ETA: jobs per second over a sliding window, on given times."""

from __future__ import annotations

import pytest

from orchestrator.cli.rate_window import RateWindow


def test_no_rate_until_two_readings_apart_in_time() -> None:
    window = RateWindow(span_s=10)
    assert window.rate is None and window.eta_s(5) is None
    window.add(100.0, 3)
    assert window.rate is None
    window.add(100.0, 3)
    assert window.rate is None  # no time has passed


def test_the_rate_spans_the_window_and_forgets_what_came_before() -> None:
    window = RateWindow(span_s=10)
    window.add(0.0, 0)
    window.add(5.0, 50)  # a fast start: 10 jobs/s
    assert window.rate == 10.0
    for second in range(6, 31):
        window.add(float(second), 50 + (second - 5))  # then 1 job/s
    # The last 10 s (and the one reading at their start) hold only the slow part.
    assert window.rate == pytest.approx(1.0)
    assert window.eta_s(30) == pytest.approx(30.0)


def test_eta_is_zero_when_nothing_is_left_and_unknown_when_nothing_moves() -> None:
    window = RateWindow()
    window.add(0.0, 4)
    window.add(2.0, 4)
    assert window.rate == 0.0
    assert window.eta_s(3) is None
    assert window.eta_s(0) == 0.0


def test_bad_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="span_s must be positive"):
        RateWindow(span_s=0)
    window = RateWindow()
    window.add(5.0, 1)
    with pytest.raises(ValueError, match="time order"):
        window.add(4.0, 2)
