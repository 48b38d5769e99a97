"""Dynamic batching on one dedicated thread.

Requests join the running batch between steps and leave it when they finish, so one long
request never holds back the rest. The thread is the only one that touches the model (GPU and
CPU steps never run on an event loop); callers wait on futures.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Collection
from concurrent.futures import Future
from typing import Protocol

import torch

from worker.engines.transformers.sequence import Sequence
from worker.errors import EngineClosedError
from worker.generation import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


class StepModel(Protocol):
    """A model that can start sequences one at a time and advance many by one token at once."""

    @property
    def eos_token_ids(self) -> Collection[int]: ...

    @property
    def max_batch_size(self) -> int: ...

    def decode_text(self, ids: list[int]) -> str: ...

    def prefill(self, sequence: Sequence) -> torch.Tensor:
        """Run the prompt; return the logits for the first new token: [vocab]."""

    def decode(self, sequences: list[Sequence]) -> torch.Tensor:
        """Feed each sequence its last token; return the next logits: [len(sequences), vocab]."""

    def release(self, sequence: Sequence) -> None:
        """Forget the sequence's cached state."""


class DynamicBatcher:
    def __init__(self, model: StepModel, name: str = "vlmq-engine") -> None:
        self._model = model
        self._incoming: queue.SimpleQueue[Sequence | None] = queue.SimpleQueue()
        self._running: list[Sequence] = []
        self._closed = threading.Event()
        self.num_steps = 0
        self.max_batch_seen = 0  # largest number of sequences one decode step advanced
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        future: Future[GenerationResult] = Future()
        if self._closed.is_set():
            future.set_exception(EngineClosedError("the engine is closed"))
            return future
        self._incoming.put(Sequence(request, future, self._model.decode_text))
        return future

    def close(self) -> None:
        self._closed.set()
        self._incoming.put(None)
        self._thread.join()
        for sequence in self._running:
            self._fail(sequence, EngineClosedError("the engine closed while it ran"))
        while True:
            try:
                pending = self._incoming.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                pending.future.set_exception(EngineClosedError("the engine closed first"))

    def _run(self) -> None:
        while not self._closed.is_set():
            self._admit()
            if self._running and not self._closed.is_set():
                self._step()

    def _admit(self) -> None:
        """Prefill waiting requests while the batch has room; block only when idle."""
        while len(self._running) < self._model.max_batch_size:
            try:
                sequence = self._incoming.get(block=not self._running)
            except queue.Empty:
                return
            if sequence is None:
                return
            if sequence.future.set_running_or_notify_cancel():
                self._start(sequence)

    def _start(self, sequence: Sequence) -> None:
        sequence.prefill_started_at = time.perf_counter()
        try:
            logits = self._model.prefill(sequence)
        except Exception as error:  # the request's own fault or not, it fails alone
            self._fail(sequence, error)
            return
        sequence.decode_started_at = time.perf_counter()
        self._advance(sequence, logits)
        if not sequence.is_finished:
            self._running.append(sequence)

    def _step(self) -> None:
        try:
            logits = self._model.decode(self._running)
        except Exception as error:
            log.exception("decode step failed; failing its %d sequences", len(self._running))
            for sequence in self._running:
                self._fail(sequence, error)
            self._running = []
            return
        self.num_steps += 1
        self.max_batch_seen = max(self.max_batch_seen, len(self._running))
        for sequence, row in zip(self._running, logits, strict=True):
            self._advance(sequence, row)
        self._running = [s for s in self._running if not s.is_finished]

    def _advance(self, sequence: Sequence, logits: torch.Tensor) -> None:
        sequence.append(sequence.sampler.next_token(logits), self._model.eos_token_ids)
        if sequence.is_finished:
            self._model.release(sequence)
            sequence.future.set_result(sequence.result())

    def _fail(self, sequence: Sequence, error: BaseException) -> None:
        self._model.release(sequence)
        if not sequence.future.done():
            sequence.future.set_exception(error)
