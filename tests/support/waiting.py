"""Waiting on a condition with a deadline: how tests wait for something, instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_S = 0.02  # how often the condition is looked at; not a guess at how long anything takes


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Return as soon as `condition()` holds; fail, naming `what`, if it does not in time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{timeout_s:g} s passed and still not: {what}")
        time.sleep(POLL_S)
