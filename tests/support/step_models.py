"""A base for test step models that wrap the real one at the `StepModel` seam.

Subclasses override the steps they change (fail, wait, record) and pass the rest through.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from worker.engines.transformers.language import TransformersStepModel
from worker.engines.transformers.sequence import Sequence


class WrappedStepModel:
    def __init__(self, inner: TransformersStepModel) -> None:
        self.inner = inner

    @property
    def eos_token_ids(self) -> Collection[int]:
        return self.inner.eos_token_ids

    @property
    def max_batch_size(self) -> int:
        return self.inner.max_batch_size

    def decode_text(self, ids: list[int]) -> str:
        return self.inner.decode_text(ids)

    def prefill(self, sequence: Sequence) -> torch.Tensor:
        return self.inner.prefill(sequence)

    def decode(self, sequences: list[Sequence]) -> torch.Tensor:
        return self.inner.decode(sequences)

    def release(self, sequence: Sequence) -> None:
        self.inner.release(sequence)
