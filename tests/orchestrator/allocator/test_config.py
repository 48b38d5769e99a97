from __future__ import annotations

import pytest

from orchestrator.allocator.config import AllocatorConfig


def test_defaults_use_exllamav2s_region_within_int32() -> None:
    config = AllocatorConfig()
    assert config.id_base == 1_000_000_000
    assert config.id_limit <= 2**31


def test_unknown_settings_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown allocator settings: chunk_sise$"):
        AllocatorConfig.from_mapping({"chunk_sise": 10})
    assert AllocatorConfig.from_mapping({"chunk_size": 10, "lease_size": 10}).chunk_size == 10


@pytest.mark.parametrize(
    "settings",
    [
        {"id_base": 10, "id_limit": 10},
        {"lease_size": 0},
        {"id_base": 0, "id_limit": 5},
        {"chunk_size": 100, "lease_size": 101},
    ],
)
def test_inconsistent_settings_are_an_error(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"id_base|must be positive|exceeds"):
        AllocatorConfig.from_mapping(settings)
