"""Sampling parameters: the edge where every field's type and range is checked.

Nothing that reaches an engine thread can make sampling raise. The bounds are the ones both
engines survive: exllamav2 samples in float32 (its `ext_sampling.cpp`), `worker.sampling.Sampler`
in float64. No torch here: the queue's client and schema build these without loading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from worker.errors import InvalidRequestError

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256  # each one is searched for in the text after every token
# exllamav2 samples greedily below 0.01 (`sample_basic`); refusing (0, 0.01) keeps one meaning
# for every accepted temperature across engines, and keeps 1 / temperature far from float32's
# limit (1e-40 made exllamav2's 1 / temperature inf and its softmax NaN).
MIN_TEMPERATURE = 0.01
# Far above any use (logits / 100 is close to uniform); bounds logits / temperature.
MAX_TEMPERATURE = 100.0
# exllamav2 reads top_p in float32 and takes 0 as "off": a top_p that rounds to 0 (1e-300)
# would keep every token there and one here. Below 1e-6 top_p keeps the best token only for
# any vocabulary under a million tokens (the best holds at least 1 / vocab of the mass).
MIN_TOP_P = 1e-6
MAX_TOP_K = 2**31 - 1  # exllamav2's sampler takes a C int; larger would not keep fewer tokens
# torch.Generator.manual_seed holds 64 unsigned bits. Negative seeds are refused: torch wraps
# -1 to 2**64 - 1 while Python's random (exllamav2's job RNG) takes -1 as 1.
MAX_SEED = 2**64 - 1


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy: always the most likely token
    top_p: float = 1.0  # nucleus sampling; 1.0 keeps every token
    top_k: int = 0  # 0 keeps every token
    seed: int | None = None  # fixes the random draws of one request, whatever else runs
    stop_strings: tuple[str, ...] = ()  # generation ends before the first one that appears

    def __post_init__(self) -> None:
        problems = [
            *_int_problems("max_new_tokens", self.max_new_tokens, 1, None),
            *_temperature_problems(self.temperature),
            *_float_problems("top_p", self.top_p, MIN_TOP_P, 1.0),
            *_int_problems("top_k", self.top_k, 0, MAX_TOP_K),
            *([] if self.seed is None else _int_problems("seed", self.seed, 0, MAX_SEED)),
            *_stop_string_problems(self.stop_strings),
        ]
        if problems:
            raise InvalidRequestError("; ".join(problems))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def _int_problems(name: str, value: object, low: int, high: int | None) -> list[str]:
    # bool is an int to isinstance; True as a token count is a caller's bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        return [f"{name} must be an int, got {type(value).__name__} {value!r}"]
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        return [f"{name} must be {bounds}, got {value!r}"]
    return []


def _as_finite_float(value: object) -> float | None:
    """The value as a finite float, or None if it is not a real number or not finite."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)  # an int past 1e308 overflows here
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _float_problems(name: str, value: object, low: float, high: float) -> list[str]:
    number = _as_finite_float(value)
    if number is None or not low <= number <= high:
        return [f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}"]
    return []


def _temperature_problems(value: object) -> list[str]:
    number = _as_finite_float(value)
    if number is None or not (number == 0 or MIN_TEMPERATURE <= number <= MAX_TEMPERATURE):
        return [
            f"temperature must be 0 (greedy) or a finite number in "
            f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {value!r}"
        ]
    return []


def _stop_string_problems(value: object) -> list[str]:
    # A tuple only: a str would be read as its characters, and a list could change after it
    # was checked (the params are frozen, their contents would not be).
    if not isinstance(value, tuple):
        return [f"stop_strings must be a tuple of str, got {type(value).__name__} {value!r}"]
    problems = []
    if len(value) > MAX_STOP_STRINGS:
        problems.append(f"stop_strings: at most {MAX_STOP_STRINGS}, got {len(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(f"stop_strings[{index}] must be a str, got {type(item).__name__}")
        elif not 1 <= len(item) <= MAX_STOP_STRING_CHARS:
            problems.append(
                f"stop_strings[{index}] must have 1 to {MAX_STOP_STRING_CHARS} characters, "
                f"got {len(item)}"
            )
    return problems
