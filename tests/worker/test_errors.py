"""Every error vlmq raises on purpose survives the trip between processes that Ray makes."""

from __future__ import annotations

import pickle

import pytest

from worker import errors

SAMPLES: list[errors.VlmqError] = [
    errors.AliasWithoutSpanError("<image>", "no span for <image>"),
    errors.ConflictingSpansError("<a>", "two spans"),
    errors.UnsupportedImageFormatError("BMP", "send JPEG"),
    errors.ImageTooLargeError("pixels", 50_000_000, 40_000_000),
    errors.ImageTooLargeError("pixels", None, 40_000_000),
    errors.TooManyImagesError(17, 16),
    errors.CorruptImageError("truncated"),
    errors.PromptTooLongError("too long"),
    errors.StaleEpochError("stale"),
]


def every_error_class() -> set[type[errors.VlmqError]]:
    found: set[type[errors.VlmqError]] = set()
    pending = [errors.VlmqError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    return {cls for cls in found if cls.__module__ == errors.__name__}


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_fields(error: errors.VlmqError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def test_every_error_with_its_own_constructor_rebuilds_itself() -> None:
    # pickle rebuilds an exception as cls(*args); one whose __init__ takes other arguments
    # than its message needs its own __reduce__, or it cannot leave the process that raised it.
    for cls in every_error_class():
        if cls.__init__ is not Exception.__init__:
            assert cls.__reduce__ is not BaseException.__reduce__, cls.__name__
