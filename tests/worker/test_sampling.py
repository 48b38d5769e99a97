"""SamplingParams refuses what an engine cannot sample with; Sampler survives whatever passes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import InvalidRequestError
from worker.sampling import Sampler
from worker.sampling_params import (
    MAX_SEED,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MIN_TEMPERATURE,
    MIN_TOP_P,
    SamplingParams,
)

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
        ("max_new_tokens", True),  # isinstance(True, int) holds; a bool is still no count
        ("max_new_tokens", "8"),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        # Each of these passed once and then killed an engine thread (issue 8).
        ("temperature", 1e308),
        ("temperature", 1e39),
        ("temperature", 1e-40),
        pytest.param("temperature", 10**400, id="temperature-10**400"),  # overflows float()
        ("temperature", MIN_TEMPERATURE / 2),  # exllamav2 would sample it greedily
        ("temperature", MAX_TEMPERATURE * 2),
        ("temperature", True),
        ("temperature", "1.0"),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", 1e-300),  # float32 rounds it to 0, which exllamav2 reads as "off"
        ("top_p", math.nan),
        ("top_p", False),
        ("top_k", -1),
        ("top_k", True),
        ("top_k", 3.0),
        ("top_k", MAX_TOP_K + 1),
        ("seed", "seven"),
        ("seed", 2**64),  # torch.Generator.manual_seed overflows
        ("seed", -1),
        ("seed", True),
        ("seed", 7.0),
        ("stop_strings", ("",)),
        ("stop_strings", tuple(str(i) for i in range(MAX_STOP_STRINGS + 1))),
        ("stop_strings", "stop"),  # a bare str is not a tuple of its characters
        ("stop_strings", ["stop"]),
        ("stop_strings", None),
        ("stop_strings", (5,)),  # str.find(5) raised on the engine thread
        ("stop_strings", (b"stop",)),
        ("stop_strings", ("x" * (MAX_STOP_STRING_CHARS + 1),)),
    ],
)
def test_bad_parameters_are_refused_with_their_name(field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_every_bad_field_is_named_in_one_error() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        SamplingParams(max_new_tokens=True, temperature=1e308, top_p=1e-300, top_k=-1,
                       seed=2**64, stop_strings="stop")  # type: ignore[arg-type]
    message = str(raised.value)
    for field in ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop_strings"):
        assert field in message


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0},
        {"temperature": MIN_TEMPERATURE},
        {"temperature": MAX_TEMPERATURE},
        {"temperature": 1},  # an int is a number
        {"top_p": MIN_TOP_P},
        {"top_k": MAX_TOP_K},
        {"seed": 0},
        {"seed": MAX_SEED},
        {"stop_strings": tuple("x" * MAX_STOP_STRING_CHARS for _ in range(MAX_STOP_STRINGS))},
    ],
)
def test_the_bounds_themselves_are_accepted_and_sample(options: dict[str, object]) -> None:
    params = SamplingParams(**options)  # type: ignore[arg-type]
    assert all(0 <= token < len(LOGITS) for token in draws(params, count=5))


def test_the_best_token_survives_a_tiny_top_p_and_an_extreme_temperature() -> None:
    huge = torch.tensor([3e38, -3e38, 3e38 * 0.99, 0.0])
    for options in ({"temperature": MIN_TEMPERATURE}, {"temperature": MAX_TEMPERATURE}):
        sampler = Sampler(SamplingParams(top_p=MIN_TOP_P, seed=1, **options))  # type: ignore[arg-type]
        assert {sampler.next_token(huge) for _ in range(20)} == {0}


@st.composite
def valid_params(draw: st.DrawFn) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=draw(st.integers(1, 10**6)),
        temperature=draw(st.one_of(
            st.just(0), st.floats(MIN_TEMPERATURE, MAX_TEMPERATURE), st.integers(1, 100),
        )),
        top_p=draw(st.floats(MIN_TOP_P, 1.0)),
        top_k=draw(st.one_of(st.integers(0, 8), st.integers(0, MAX_TOP_K))),
        seed=draw(st.one_of(st.none(), st.integers(0, MAX_SEED))),
    )


# Logits as engines may produce them: masked (-inf), broken (nan, +inf), near float32's limits.
LOGIT_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([-math.inf, math.inf, math.nan, 3.4e38, -3.4e38, 1e-45, 0.0]),
)


@settings(max_examples=300, deadline=None)
@given(
    params=valid_params(),
    values=st.lists(LOGIT_VALUES, min_size=1, max_size=40),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
)
def test_any_valid_params_and_any_logits_give_a_token_in_range(
    params: SamplingParams, values: list[float], dtype: torch.dtype
) -> None:
    logits = torch.tensor(values, dtype=torch.float64).to(dtype)
    token = Sampler(params).next_token(logits)
    assert 0 <= token < len(values)
    as_float = logits.double()
    usable = ~torch.isnan(as_float) & (as_float > -math.inf)
    if usable.any():
        assert usable[token], "a NaN or -inf token was drawn while others were usable"
    if (as_float == math.inf).any():
        assert as_float[token] == math.inf
    elif params.is_greedy and usable.any():
        assert as_float[token] == as_float[usable].max()
