"""A span: one image inside one prompt."""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import InvalidSpanError
from worker.token_range import TokenRange


@dataclass(frozen=True, slots=True)
class ImageGrid:
    """The patch grid the vision tower produced: time (frames), height and width in patches."""

    frames: int
    height: int
    width: int


@dataclass(frozen=True, slots=True)
class Span:
    """One image inside one prompt.

    The token range covers every embedding row of the image, including the special-token rows
    around it (exllamav2's `pre_tokens`/`post_tokens`): those rows come from the language
    model's embedding table, so an engine fills them from `pre_token_ids`/`post_token_ids`.
    """

    alias: str  # text that stands for the image in the prompt, e.g. "<image>" or "<$EMB_7$>"
    token_range: TokenRange
    pre_token_ids: tuple[int, ...] = ()  # special tokens whose rows open the range
    post_token_ids: tuple[int, ...] = ()  # special tokens whose rows close the range
    grid: ImageGrid | None = None  # absent for towers without a patch grid

    def __post_init__(self) -> None:
        if not self.alias:
            raise InvalidSpanError(self.alias, "a span needs a non-empty alias")
        special_rows = len(self.pre_token_ids) + len(self.post_token_ids)
        if special_rows > self.token_range.length:
            raise InvalidSpanError(
                self.alias,
                f"span {self.alias!r} has {special_rows} special-token rows but its token range "
                f"holds only {self.token_range.length}",
            )

    @property
    def num_image_rows(self) -> int:
        """Rows produced by the vision tower itself, special-token rows excluded."""
        return self.token_range.length - len(self.pre_token_ids) - len(self.post_token_ids)
