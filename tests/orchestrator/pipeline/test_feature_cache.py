from __future__ import annotations

from orchestrator.pipeline.feature_cache import FeatureCache, FeatureEntry
from orchestrator.pipeline.image_key import ImageKey


def key(name: str) -> ImageKey:
    return ImageKey(name * 64)


def entry(num_bytes: int) -> FeatureEntry:
    return FeatureEntry(features=object(), num_rows=object(), num_bytes=num_bytes, vision_index=0,
                        vision_actor=object())


def test_least_recently_used_entries_go_past_the_byte_bound() -> None:
    cache = FeatureCache(max_bytes=100)
    a, b = entry(40), entry(40)
    cache.put(key("a"), a)
    cache.put(key("b"), b)
    assert cache.get(key("a")) is a  # a is now the most recent
    cache.put(key("c"), entry(40))
    assert cache.get(key("b")) is None
    assert cache.get(key("a")) is a
    assert cache.size == 80 and len(cache) == 2
    assert (cache.num_hits, cache.num_misses) == (2, 1)


def test_an_entry_larger_than_the_bound_is_kept_until_the_next_one() -> None:
    cache = FeatureCache(max_bytes=10)
    big = entry(50)
    cache.put(key("a"), big)
    assert cache.get(key("a")) is big  # a job is about to use it
    cache.put(key("b"), entry(5))
    assert cache.get(key("a")) is None and len(cache) == 1


def test_dropping_and_replacing_keep_the_byte_count() -> None:
    cache = FeatureCache(max_bytes=100)
    cache.put(key("a"), entry(30))
    cache.put(key("a"), entry(20))
    assert cache.size == 20 and len(cache) == 1
    cache.drop(key("a"))
    cache.drop(key("a"))
    assert cache.size == 0 and len(cache) == 0
