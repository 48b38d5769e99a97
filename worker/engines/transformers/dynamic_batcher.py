"""Dynamic batching on one dedicated thread.

Requests join the running batch between steps and leave it when they finish, so one long
request never holds back the rest. The thread is the only one that touches the model (GPU and
CPU steps never run on an event loop); callers wait on futures. An aborted request leaves at the
next step boundary; the thread alone resolves futures, so an abort never races a result.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future
from typing import Protocol

import torch

from worker.engines.live_requests import AbortRequests, LiveRequests, died
from worker.engines.seam import EngineLoad
from worker.engines.transformers.sequence import Sequence
from worker.errors import EngineClosedError, JobCancelledError, VlmqError
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
    """Runs requests on one thread that survives anything one request does.

    A request that raises in its own processing (prefill, sampling, stop strings, release)
    fails alone; a decode step that raises fails the sequences it advanced. If the thread dies
    anyway (a bug, a BaseException), every request it holds fails with `EngineDiedError`, later
    ones fail at once, and `failure` says why: the process that owns the engine must go.
    """

    def __init__(self, model: StepModel, name: str = "vlmq-engine") -> None:
        self._model = model
        self._incoming: queue.SimpleQueue[Sequence | None] = queue.SimpleQueue()
        # The engine thread's own, until close() joins it: received, not yet prefilled; running.
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._live: LiveRequests[Sequence] = LiveRequests()
        # Futures of requests to drop at the next step boundary; a future leaves once done.
        self._aborts = AbortRequests()
        self.num_steps = 0
        self.max_batch_seen = 0  # largest number of sequences one decode step advanced
        self.num_aborted = 0  # requests dropped or taken out of the batch by abort()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def failure(self) -> BaseException | None:
        """What killed the engine's thread; None while it runs and after a clean close."""
        return self._live.failure

    @property
    def num_running(self) -> int:
        """Sequences in the batch now (a snapshot: the engine thread changes it)."""
        return len(self._running)

    @property
    def load(self) -> EngineLoad:
        """In the batch, and waiting for a place in it (a snapshot, from any thread)."""
        running = len(self._running)
        return EngineLoad(running, max(0, self._live.count() - running))

    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        future: Future[GenerationResult] = Future()
        try:
            sequence = Sequence(request, future, self._model.decode_text)
        except Exception as error:  # the request's own fault: it fails before it is queued
            future.set_exception(error)
            return future
        self._live.admit(sequence, future, self._incoming.put)
        return future

    def abort(self, future: Future[GenerationResult]) -> None:
        """Drop the request of `future` at the next step boundary; see `LanguageEngine.abort`."""
        self._aborts.ask(future, self._live, lambda request: request.future)

    def close(self) -> None:
        self._live.close(lambda: self._incoming.put(None))
        self._thread.join()
        for sequence in self._running:
            self._fail(sequence, EngineClosedError("the engine closed while it ran"))
        self._running = []
        self._waiting.clear()
        for sequence in self._live.snapshot():
            self._fail(sequence, EngineClosedError("the engine closed first"))
        while True:
            try:
                self._incoming.get_nowait()
            except queue.Empty:
                break

    def _run(self) -> None:
        try:
            while not self._live.closed.is_set():
                self._receive()
                self._drop_aborted()
                self._admit()
                if self._running and not self._live.closed.is_set():
                    self._step()
        except BaseException as error:  # the thread ends either way: say why, fail its work
            self._die(error)

    def _die(self, error: BaseException) -> None:
        log.critical("engine thread %s died", self._thread.name, exc_info=error)
        for sequence in self._live.die(error):
            self._fail(sequence, died(error))
        self._running = []
        self._waiting.clear()

    def _receive(self) -> None:
        """Take every submitted request, so an abort finds it; block only when idle."""
        block = not self._running and not self._waiting
        while True:
            try:
                sequence = self._incoming.get(block=block)
            except queue.Empty:
                return
            if sequence is None:  # close() wakes the thread
                return
            self._waiting.append(sequence)
            block = False

    def _drop_aborted(self) -> None:
        """Fail aborted requests, queued or running; a running one's state is released."""
        aborted = self._aborts.pending()
        if not aborted:
            return
        for sequence in [*self._waiting, *self._running]:
            if sequence.future in aborted and not sequence.future.done():
                self.num_aborted += 1
                message = f"request {sequence.request.request_id} was aborted"
                self._fail(sequence, JobCancelledError(message))
        self._waiting = deque(s for s in self._waiting if not s.future.done())
        self._running = [s for s in self._running if not s.future.done()]

    def _admit(self) -> None:
        """Prefill waiting requests, in order, while the batch has room."""
        while self._waiting and len(self._running) < self._model.max_batch_size:
            sequence = self._waiting.popleft()
            if sequence.future.set_running_or_notify_cancel():
                self._start(sequence)

    def _start(self, sequence: Sequence) -> None:
        sequence.prefill_started_at = time.perf_counter()
        try:
            logits = self._model.prefill(sequence)
            sequence.decode_started_at = time.perf_counter()
            self._advance(sequence, logits)
        except Exception as error:  # the request's own fault or not, it fails alone
            self._fail_alone(sequence, error)
            return
        if not sequence.future.done():
            self._running.append(sequence)

    def _step(self) -> None:
        try:
            logits = self._model.decode(self._running)
            if logits.shape[0] != len(self._running):
                raise RuntimeError(
                    f"decode returned {logits.shape[0]} rows for {len(self._running)} sequences"
                )
        except Exception as error:
            log.exception("decode step failed; failing its %d sequences", len(self._running))
            for sequence in self._running:
                self._fail(sequence, error)
            self._running = []
            return
        self.num_steps += 1
        self.max_batch_seen = max(self.max_batch_seen, len(self._running))
        for sequence, row in zip(self._running, logits, strict=True):
            try:
                self._advance(sequence, row)
            except Exception as error:  # one sequence's sampling or stop check: it alone
                self._fail_alone(sequence, error)
        # Finished and failed sequences alike have their future resolved.
        self._running = [s for s in self._running if not s.future.done()]

    def _advance(self, sequence: Sequence, logits: torch.Tensor) -> None:
        sequence.append(sequence.sampler.next_token(logits), self._model.eos_token_ids)
        if sequence.is_finished:
            self._model.release(sequence)
            sequence.future.set_result(sequence.result())

    def _fail_alone(self, sequence: Sequence, error: Exception) -> None:
        if not isinstance(error, VlmqError):  # vlmq's own errors say enough; anything else not
            log.exception("request %s failed", sequence.request.request_id)
        self._fail(sequence, error)

    def _fail(self, sequence: Sequence, error: BaseException) -> None:
        try:
            self._model.release(sequence)
        except Exception:
            log.exception("could not release request %s", sequence.request.request_id)
        if not sequence.future.done():
            sequence.future.set_exception(error)
