"""The engine seam: what the rest of vlmq sees of a model, whichever library runs it.

A vision engine turns an image into the rows its span needs; a language engine runs requests
with dynamic batching and answers each with a future. Engines: transformers on the CPU
(`worker/engines/transformers/`), exllamav2 on the GPU (`worker/engines/exllamav2/`). The rest
of vlmq imports these types from `worker.engines`.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from worker.generation import GenerationRequest, GenerationResult
from worker.span import SpanLayout

# How many ImageFeatures this process has unpickled, over its whole life: read it before and
# after what you measure. It counts reads only: Ray returns results under 100 KiB inline into
# the caller's memory and forwards them inline, unread, so a driver that passes small features
# on counts nothing although their bytes went through it. Where features live is a question
# for the object store (tests/support/driver_objects.py).
_num_features_received = 0


def num_features_received() -> int:
    return _num_features_received


def _receive_features(layout: SpanLayout, rows: torch.Tensor) -> ImageFeatures:
    global _num_features_received  # noqa: PLW0603 - a per-process counter is the point
    _num_features_received += 1
    return ImageFeatures(layout, rows)


@dataclass(frozen=True, slots=True)
class ImageFeatures:
    layout: SpanLayout
    rows: torch.Tensor  # [layout.num_image_rows, hidden], float16, CPU: fit for the object store

    def __reduce__(self) -> tuple[object, tuple[SpanLayout, torch.Tensor]]:
        return (_receive_features, (self.layout, self.rows))

    @property
    def num_bytes(self) -> int:
        return self.rows.element_size() * self.rows.numel()


class VisionEngine(Protocol):
    def layout_for(self, width: int, height: int) -> SpanLayout:
        """The rows an image of this size will take, without running the tower."""

    def embed(self, image: Image.Image) -> ImageFeatures:
        """Run the vision tower and projector on one decoded RGB image."""


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What a language engine holds now, as vLLM counts it: a snapshot (its thread moves
    requests on meanwhile)."""

    running: int  # in the batch: prefilling or decoding
    waiting: int  # submitted, waiting for a batch slot


class LanguageEngine(Protocol):
    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        """Queue a request; it joins the running batch at the next step."""

    def abort(self, future: Future[GenerationResult]) -> None:
        """Give up the request `submit` answered with `future`; thread-safe, returns at once.

        A request still queued is dropped; a running one leaves the batch at the next step
        boundary, its cached state released. Either way its future fails with
        `JobCancelledError`. A future that is done, or not this engine's, is left alone.
        """

    def close(self) -> None:
        """Finish nothing more; fail requests still queued or running."""

    @property
    def load(self) -> EngineLoad:
        """Requests in its batch and waiting for a slot; from any thread."""

    @property
    def failure(self) -> BaseException | None:
        """Why the engine's thread died, or None while it runs; a dead engine answers nothing."""
