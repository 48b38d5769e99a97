"""Each server's share of a queue's backlog: what its scaler sizes its own pipeline for."""

from __future__ import annotations

import pytest

from orchestrator.scaler.backlog import Backlog


@pytest.mark.parametrize(
    ("count", "servers", "share"),
    [(10, 1, 10), (10, 3, 4), (9, 3, 3), (1, 4, 1), (0, 2, 0)],
)
def test_a_shared_backlog_is_split_among_its_servers_rounding_up(
    count: int, servers: int, share: int
) -> None:
    assert Backlog(count, 0, 0, 0.0, servers).share(count) == share
