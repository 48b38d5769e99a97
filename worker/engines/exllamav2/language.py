"""The language side of the exllamav2 engine: one thread drives exllamav2's dynamic generator.

Callers submit requests and get futures. The thread moves them into the generator (which batches
them dynamically and keeps the paged prefix cache), calls `iterate()` while it has work, and
resolves each future from the job's final result. It is the only thread that touches the
generator, its cache and the embedding cache.

The epoch rule (`worker/engines/epoch_gate.py`): a request whose ranges are of a newer epoch waits
until the generator has finished every running request, then the whole page table is reset before it
starts. A narrower drop is not safe: a page's hash covers every token before it, so a page
whose ancestors held image IDs can still be matched after those ancestors were reused.
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
from worker.errors import (
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
    StaleEpochError,
)
from worker.generation import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


class GeneratorSeam(Protocol):
    """What the engine uses of `ExLlamaV2DynamicGenerator`; a fake stands in on the CPU."""

    max_seq_len: int  # longest prompt plus completion
    page_size: int  # tokens per cache page (the whole cache when unpaged)
    max_pages: int

    def enqueue(self, job: Any) -> int:
        """Queue a job; returns its serial number, which its result dicts carry."""

    def iterate(self) -> list[dict[str, Any]]: ...

    def num_remaining_jobs(self) -> int: ...

    def reset_page_table(self) -> None:
        """Forget every cached page; only while no job is queued or running."""

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


@dataclass(frozen=True, slots=True)
class _Submitted:
    request: GenerationRequest
    future: Future[GenerationResult]
    submitted_at: float  # time.time(), the clock of exllamav2's own timings


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
        self._streams: dict[int, tuple[_Submitted, JobStream]] = {}  # by job serial
        self._reset_pending = False  # a newer epoch waits for the generator to drain
        self._closed = threading.Event()
        self._lock = threading.Lock()  # no request slips in while close() drains the queue
        self._thread = threading.Thread(target=self._run, name=f"vlmq-{vlm.family}", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        future: Future[GenerationResult] = Future()
        with self._lock:
            if self._closed.is_set():
                future.set_exception(EngineClosedError("the engine is closed"))
            else:
                self._incoming.put(_Submitted(request, future, time.time()))
        return future

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self._incoming.put(None)
        self._thread.join()
        for submitted, _ in self._streams.values():
            _fail(submitted.future, EngineClosedError("the engine closed while it ran"))
        self._streams.clear()
        if self.generator.num_remaining_jobs():
            self.generator.clear_queue()
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
        while not self._closed.is_set():
            self._receive()
            self._start_waiting()
            if self.generator.num_remaining_jobs() and not self._closed.is_set():
                self._step()

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
            except StaleEpochError as error:
                self._waiting.popleft()
                _fail(submitted.future, error)
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
            _fail(submitted.future, error)
            return
        stream = JobStream(request, waited_s=time.time() - submitted.submitted_at)
        self._streams[serial] = (submitted, stream)

    def _step(self) -> None:
        try:
            results = self.generator.iterate()
        except Exception as error:
            log.exception("exllamav2 iterate failed; failing its %d requests", len(self._streams))
            for submitted, _ in self._streams.values():
                _fail(submitted.future, error)
            self._streams.clear()
            try:
                self.generator.clear_queue()
            except Exception:
                log.exception("could not clear exllamav2's queue after a failed step")
            return
        for result in results:
            serial = result["serial"]
            if serial not in self._streams:
                continue
            submitted, stream = self._streams[serial]
            try:
                finished = stream.receive(result)
            except Exception as error:  # a final result this engine cannot read
                del self._streams[serial]
                _fail(submitted.future, error)
                continue
            if finished is not None:
                del self._streams[serial]
                self._recent.append(finished)
                submitted.future.set_result(finished.result)


def _fail(future: Future[GenerationResult], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
