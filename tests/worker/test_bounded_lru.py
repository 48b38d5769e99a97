"""The one bounded LRU: counted by entries (the default) and by a size of each value."""

from __future__ import annotations

import pytest

from worker.bounded_lru import BoundedLru


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


def test_sizes_come_from_size_of() -> None:
    lru: BoundedLru[str, bytes] = BoundedLru(10, size_of=len)
    lru.put("a", b"abcd")
    lru.put("b", b"efgh")
    assert (lru.size, len(lru)) == (8, 2)
    lru.put("c", b"ij")  # exactly at the bound: nothing leaves
    assert (lru.size, len(lru), lru.num_evicted) == (10, 3, 0)
    lru.put("d", b"k")  # over it: the oldest leaves
    assert "a" not in lru
    assert (lru.size, len(lru), lru.num_evicted) == (7, 3, 1)


def test_replacing_a_key_counts_only_the_new_value() -> None:
    lru: BoundedLru[str, bytes] = BoundedLru(10, size_of=len)
    lru.put("a", b"abcdef")
    lru.put("a", b"ab")
    assert (lru.size, len(lru), lru.get("a")) == (2, 1, b"ab")
    lru.drop("a")
    lru.drop("a")  # dropping an absent key changes nothing
    assert (lru.size, len(lru), lru.num_evicted) == (0, 0, 0)


def test_the_newest_entry_stays_even_above_the_bound() -> None:
    lru: BoundedLru[str, bytes] = BoundedLru(3, size_of=len)
    lru.put("a", b"a")
    lru.put("big", b"too large")
    assert ("a" in lru, "big" in lru, lru.size) == (False, True, 9)


def test_hits_misses_and_peek() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert (lru.get("a"), lru.get("zzz")) == (1, None)
    assert lru.peek("b") == 2  # neither a hit nor a refresh: "b" is still the oldest
    lru.put("c", 3)
    assert ("b" in lru, lru.num_hits, lru.num_misses) == (False, 1, 1)


def test_clear_empties_but_keeps_the_counters() -> None:
    lru: BoundedLru[str, int] = BoundedLru(1)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.get("b")
    lru.clear()
    assert (len(lru), lru.size, lru.num_evicted, lru.num_hits) == (0, 0, 1, 1)
