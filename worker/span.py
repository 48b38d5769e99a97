"""A span: one image inside one prompt, and how its rows sit in its token range."""

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
class SpanLayout:
    """Where an image's embedding rows sit in its token range; known from the image size alone.

    Some rows are not the vision tower's: special tokens around or inside the image (Qwen2-VL's
    `<|vision_start|>`/`<|vision_end|>`, Pixtral's `[IMG_BREAK]` after each row and
    `[IMG_END]`). They come from the language model's embedding table, so the generator fills
    them (`text_rows`) and the vision side produces only the image rows, in order.
    """

    num_rows: int  # length of the token range
    text_rows: tuple[tuple[int, int], ...] = ()  # (row offset, token ID), ascending offsets
    # exllamav2's pre_tokens/post_tokens: the text rows it counts as outside the image proper.
    num_pre_tokens: int = 0
    num_post_tokens: int = 0
    grid: ImageGrid | None = None

    def __post_init__(self) -> None:
        offsets = [offset for offset, _ in self.text_rows]
        if self.num_rows <= 0:
            raise ValueError(f"a span layout needs rows, got {self.num_rows}")
        if offsets != sorted(set(offsets)) or any(not 0 <= o < self.num_rows for o in offsets):
            raise ValueError(f"text rows {offsets} are not distinct offsets below {self.num_rows}")
        if self.num_pre_tokens + self.num_post_tokens > len(self.text_rows):
            raise ValueError("more pre/post tokens than text rows")

    @property
    def num_image_rows(self) -> int:
        return self.num_rows - len(self.text_rows)

    def image_row_offsets(self) -> list[int]:
        text_offsets = {offset for offset, _ in self.text_rows}
        return [offset for offset in range(self.num_rows) if offset not in text_offsets]


@dataclass(frozen=True, slots=True)
class Span:
    """One image inside one prompt: its alias, its token range and the layout of its rows."""

    alias: str  # text that stands for the image in the prompt, e.g. "<image>" or "<$EMB_7$>"
    token_range: TokenRange
    layout: SpanLayout | None = None  # None: every row is an image row

    def __post_init__(self) -> None:
        if not self.alias:
            raise InvalidSpanError(self.alias, "a span needs a non-empty alias")
        if self.layout is not None and self.layout.num_rows != self.token_range.length:
            raise InvalidSpanError(
                self.alias,
                f"span {self.alias!r} lays out {self.layout.num_rows} rows but its token range "
                f"holds {self.token_range.length}",
            )

    @property
    def row_layout(self) -> SpanLayout:
        return self.layout or SpanLayout(self.token_range.length)
