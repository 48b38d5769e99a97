from __future__ import annotations

import pytest

from orchestrator.bounded_lru import BoundedLru


def test_least_recently_used_entry_goes_first() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert "b" not in lru
    assert (lru.get("a"), lru.get("c"), len(lru), lru.num_evicted) == (1, 3, 2, 1)


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        BoundedLru[str, int](0)
