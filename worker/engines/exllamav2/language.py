"""The language side of the exllamav2 engine: one thread drives exllamav2's dynamic generator.

Callers submit requests and get futures. The thread moves them into the generator (which batches
them dynamically and keeps the paged prefix cache), calls `iterate()` while it has work, and
resolves each future from the job's final result. It is the only thread that touches the
generator, its cache and the embedding cache.

The epoch rule (`worker/engines/epoch_gate.py`): a request whose ranges are of a newer epoch waits
until the generator has finished every running request, then the whole page table is reset before it
starts. A narrower drop is not safe: a page's hash covers every token before it, so a page
whose ancestors held image IDs can still be matched after those ancestors were reused.

An aborted request is dropped from the waiting ones, or cancelled in the generator (which frees
its pages), by the thread, between `iterate()` calls; the thread alone resolves futures.

The thread survives anything one request does: what one request brings (its epochs, its
prompt, its job, its results) fails that request alone; a failed `iterate()` fails the requests
it ran. If the thread dies anyway, every request it holds fails with `EngineDiedError`, later
ones fail at once, and `failure` says why: the process that owns the engine must go.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from worker.encoding.prompt_encoder import PromptEncoder
from worker.engines.epoch_gate import Admission, EpochGate
from worker.engines.exllamav2.embeddings import EmbeddingCache, request_embeddings
from worker.engines.exllamav2.jobs import FinishedJob, JobStream, make_job
from worker.engines.exllamav2.model import ExLlamaV2Settings, ExLlamaV2Vlm, has_paged_attention
from worker.engines.live_requests import AbortRequests, LiveRequests, died
from worker.engines.seam import EngineLoad
from worker.errors import (
    EngineClosedError,
    InvalidRequestError,
    JobCancelledError,
    PromptTooLongError,
    VlmqError,
)
from worker.generation import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


class GeneratorSeam(Protocol):
    """What the engine uses of `ExLlamaV2DynamicGenerator`; a fake stands in on the CPU."""

    max_seq_len: int  # longest prompt plus completion
    page_size: int  # tokens per cache page (the whole cache when unpaged)
    max_pages: int
    active_jobs: list[Any]  # the batch: jobs prefilling or decoding (read from any thread)

    def enqueue(self, job: Any) -> int:
        """Queue a job; returns its serial number, which its result dicts carry."""

    def iterate(self) -> list[dict[str, Any]]: ...

    def num_remaining_jobs(self) -> int: ...

    def reset_page_table(self) -> None:
        """Forget every cached page; only while no job is queued or running."""

    def cancel(self, job: Any) -> None:
        """Take a queued or running job out of the generator, freeing its pages."""

    def clear_queue(self) -> None: ...


def make_generator(vlm: ExLlamaV2Vlm, settings: ExLlamaV2Settings) -> Any:
    from exllamav2.generator import ExLlamaV2DynamicGenerator

    return ExLlamaV2DynamicGenerator(
        model=vlm.model,
        cache=vlm.cache,
        tokenizer=vlm.tokenizer,
        max_batch_size=settings.max_batch_size,
        max_chunk_size=settings.max_chunk_size,
        paged=has_paged_attention() if settings.paged is None else settings.paged,
    )


@dataclass(frozen=True, slots=True, eq=False)  # by identity: a request need not hash
class _Submitted:
    request: GenerationRequest
    future: Future[GenerationResult]
    submitted_at: float  # time.time(), the clock of exllamav2's own timings


@dataclass(frozen=True, slots=True)
class _Running:
    submitted: _Submitted
    stream: JobStream
    job: Any  # the ExLlamaV2DynamicJob in the generator, for `cancel`


class ExLlamaV2Language:
    def __init__(
        self,
        vlm: ExLlamaV2Vlm,
        settings: ExLlamaV2Settings | None = None,
        generator: GeneratorSeam | None = None,
    ) -> None:
        self.vlm = vlm
        self.settings = settings or ExLlamaV2Settings()
        # Driven by the engine's thread only, until close() returns.
        self.generator: GeneratorSeam = (
            make_generator(vlm, self.settings) if generator is None else generator
        )
        self.encoder = PromptEncoder(vlm.text_tokenizer)
        self.embedding_cache = EmbeddingCache(self.settings.embedding_cache_bytes)
        self.epoch_gate = EpochGate()
        self.num_page_table_resets = 0
        self._embed_tokens = vlm.embed_tokens
        self._recent: deque[FinishedJob] = deque(maxlen=self.settings.num_recent_results)
        self._incoming: queue.SimpleQueue[_Submitted | None] = queue.SimpleQueue()
        self._waiting: deque[_Submitted] = deque()  # received, not yet in the generator
        self._streams: dict[int, _Running] = {}  # by job serial
        self._reset_pending = False  # a newer epoch waits for the generator to drain
        self._live: LiveRequests[_Submitted] = LiveRequests()
        # Futures of requests to drop between iterations; a future leaves once done.
        self._aborts = AbortRequests()
        self.num_aborted = 0  # requests dropped or cancelled in the generator by abort()
        self._thread = threading.Thread(target=self._run, name=f"vlmq-{vlm.family}", daemon=True)
        self._thread.start()

    @property
    def failure(self) -> BaseException | None:
        """What killed the engine's thread; None while it runs and after a clean close."""
        return self._live.failure

    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        future: Future[GenerationResult] = Future()
        submitted = _Submitted(request, future, time.time())
        self._live.admit(submitted, future, self._incoming.put)
        return future

    def abort(self, future: Future[GenerationResult]) -> None:
        """Drop the request of `future` between iterations; see `LanguageEngine.abort`."""
        self._aborts.ask(future, self._live, lambda request: request.future)

    def close(self) -> None:
        self._live.close(lambda: self._incoming.put(None))
        self._thread.join()
        for running in self._streams.values():
            _fail(running.submitted.future, EngineClosedError("the engine closed while it ran"))
        self._streams.clear()
        try:
            if self.generator.num_remaining_jobs():
                self.generator.clear_queue()
        except Exception:  # after the thread died of it, say so and fail the rest anyway
            log.exception("could not clear exllamav2's queue on close")
        while True:
            try:
                late = self._incoming.get_nowait()
            except queue.Empty:
                break
            if late is not None:
                self._waiting.append(late)
        for waiting in self._waiting:
            _fail(waiting.future, EngineClosedError("the engine closed first"))
        self._waiting.clear()
        for left in self._live.snapshot():  # one the thread held when it stopped
            _fail(left.future, EngineClosedError("the engine closed first"))

    @property
    def load(self) -> EngineLoad:
        """In exllamav2's batch, and waiting for a place in it: vlmq's queue and exllamav2's
        pending jobs (a snapshot, from any thread)."""
        running = len(self.generator.active_jobs)
        return EngineLoad(running, max(0, self._live.count() - running))

    def recent_finished(self) -> list[FinishedJob]:
        """The latest finished requests, oldest first, with their prefix-cache use."""
        return list(self._recent)

    def prepare(self, request: GenerationRequest) -> tuple[list[int], list[Any]]:
        """The prompt's IDs and its placed embeddings; on the engine's thread (or after close)."""
        ids = self.encoder.encode(request.prompt, request.spans, add_bos=request.add_bos)
        if not ids:
            raise InvalidRequestError(f"request {request.request_id}: the prompt is empty")
        generator = self.generator
        context = min(generator.max_seq_len, generator.max_pages * generator.page_size)
        if len(ids) + request.sampling.max_new_tokens > context:
            raise PromptTooLongError(
                f"request {request.request_id}: {len(ids)} prompt tokens + "
                f"{request.sampling.max_new_tokens} new tokens exceed the context of {context}"
            )
        embeddings = request_embeddings(
            request.spans, request.features, self.vlm.model, self._embed_tokens,
            self.embedding_cache,
        )
        return ids, embeddings

    def _run(self) -> None:
        try:
            while not self._live.closed.is_set():
                self._receive()
                self._drop_aborted()
                self._start_waiting()
                if self.generator.num_remaining_jobs() and not self._live.closed.is_set():
                    self._step()
        except BaseException as error:  # the thread ends either way: say why, fail its work
            self._die(error)

    def _die(self, error: BaseException) -> None:
        log.critical("engine thread %s died", self._thread.name, exc_info=error)
        for submitted in self._live.die(error):
            _fail(submitted.future, died(error))
        self._streams.clear()
        self._waiting.clear()
        try:
            self.generator.clear_queue()
        except Exception:
            log.exception("could not clear exllamav2's queue after the thread died")

    def _receive(self) -> None:
        """Take submitted requests; block only when there is nothing else to do."""
        block = not self._waiting and not self.generator.num_remaining_jobs()
        while True:
            try:
                submitted = self._incoming.get(block=block)
            except queue.Empty:
                return
            if submitted is None:  # close() wakes the thread
                return
            self._waiting.append(submitted)
            block = False

    def _drop_aborted(self) -> None:
        """Fail aborted requests: drop waiting ones, cancel running ones in the generator."""
        aborted = self._aborts.pending()
        if not aborted:
            return
        for submitted in [s for s in self._waiting if s.future in aborted]:
            self._waiting.remove(submitted)
            self._cancelled(submitted)
        for serial, running in list(self._streams.items()):
            if running.submitted.future not in aborted:
                continue
            del self._streams[serial]
            try:
                self.generator.cancel(running.job)
            except Exception:  # its later results find no stream and are dropped
                log.exception("could not cancel request %s in exllamav2",
                              running.submitted.request.request_id)
            self._cancelled(running.submitted)

    def _cancelled(self, submitted: _Submitted) -> None:
        if not submitted.future.done():
            self.num_aborted += 1
            message = f"request {submitted.request.request_id} was aborted"
            submitted.future.set_exception(JobCancelledError(message))

    def _start_waiting(self) -> None:
        """Move waiting requests into the generator, in order, under the epoch rule."""
        while self._waiting:
            if self._reset_pending:
                if self.generator.num_remaining_jobs():
                    return  # the older epoch's requests finish first
                self.generator.reset_page_table()
                self.num_page_table_resets += 1
                self._reset_pending = False
            submitted = self._waiting[0]
            try:
                admission = self.epoch_gate.admit(s.token_range for s in submitted.request.spans)
            except Exception as error:  # stale, or ranges that cannot be read: it fails alone
                self._waiting.popleft()
                _fail_alone(submitted, error)
                continue
            if admission is Admission.ADVANCED:
                self._reset_pending = True
                self.embedding_cache.clear()
                continue  # admitted again once the pages are gone, as the current epoch
            self._waiting.popleft()
            self._enqueue(submitted)

    def _enqueue(self, submitted: _Submitted) -> None:
        if not submitted.future.set_running_or_notify_cancel():
            return
        request = submitted.request
        try:
            ids, embeddings = self.prepare(request)
            job = make_job(request, ids, embeddings, self.vlm.eos_token_ids)
            serial = self.generator.enqueue(job)
        except Exception as error:  # the request's own fault or not, it fails alone
            _fail_alone(submitted, error)
            return
        stream = JobStream(request, waited_s=time.time() - submitted.submitted_at)
        self._streams[serial] = _Running(submitted, stream, job)

    def _step(self) -> None:
        try:
            results = self.generator.iterate()
        except Exception as error:
            log.exception("exllamav2 iterate failed; failing its %d requests", len(self._streams))
            for running in self._streams.values():
                _fail(running.submitted.future, error)
            self._streams.clear()
            try:
                self.generator.clear_queue()
            except Exception:
                log.exception("could not clear exllamav2's queue after a failed step")
            return
        for result in results:
            serial = _serial(result)
            if serial is None or serial not in self._streams:
                continue  # not a job of ours (or unreadable): its later results will tell
            running = self._streams[serial]
            submitted = running.submitted
            try:
                finished = running.stream.receive(result)
            except Exception as error:  # a final result this engine cannot read
                del self._streams[serial]
                _fail_alone(submitted, error)
                continue
            if finished is not None:
                del self._streams[serial]
                self._recent.append(finished)
                submitted.future.set_result(finished.result)


def _serial(result: object) -> int | None:
    """The job serial a result dict of `iterate()` carries, or None if it carries none."""
    if not isinstance(result, dict):
        log.error("exllamav2 returned a result that is not a dict: %r", type(result))
        return None
    serial = result.get("serial")
    if not isinstance(serial, int):
        log.error("exllamav2 returned a result without a job serial: %r", list(result))
        return None
    return serial


def _fail_alone(submitted: _Submitted, error: Exception) -> None:
    if not isinstance(error, VlmqError):  # vlmq's own errors say enough; anything else not
        log.error("request %s failed", submitted.request.request_id, exc_info=error)
    _fail(submitted.future, error)


def _fail(future: Future[GenerationResult], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
