from __future__ import annotations

import math

import pytest
import torch

from worker.errors import InvalidRequestError
from worker.sampling import Sampler, SamplingParams

LOGITS = torch.tensor([0.1, 2.0, 1.9, -1.0, 0.5])


def draws(params: SamplingParams, count: int = 200) -> list[int]:
    sampler = Sampler(params)
    return [sampler.next_token(LOGITS) for _ in range(count)]


def test_greedy_takes_the_best_token() -> None:
    assert set(draws(SamplingParams())) == {1}
    assert set(draws(SamplingParams(temperature=1.0, top_k=1))) == {1}


def test_top_k_and_top_p_limit_the_candidates() -> None:
    assert set(draws(SamplingParams(temperature=5.0, top_k=2, seed=1))) == {1, 2}
    # The two best tokens hold most of the mass; a small top_p keeps only the best.
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.01, seed=1))) == {1}
    assert len(set(draws(SamplingParams(temperature=5.0, seed=1)))) == 5


def test_seed_fixes_the_draws() -> None:
    params = SamplingParams(temperature=2.0, seed=42)
    assert draws(params) == draws(params)
    assert draws(params) != draws(SamplingParams(temperature=2.0, seed=43))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("max_new_tokens", 2.5),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("seed", "seven"),
        ("stop_strings", ("",)),
        ("stop_strings", tuple(str(i) for i in range(17))),
    ],
)
def test_bad_parameters_are_refused_with_their_name(field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**{field: value})  # type: ignore[arg-type]
