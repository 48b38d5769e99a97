"""The requests an engine thread holds, so that a thread that dies can fail every one of them.

Both engines drive their model from one thread. A request is *live* from `submit` until its
future is done, wherever it is: queued, in the thread's hands, running. If the thread dies (a
bug, a BaseException), `die` records why and hands back every live request to fail; from then
on, and after `close`, new requests are refused at once instead of waiting forever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from worker.errors import EngineClosedError, EngineDiedError, VlmqError

Request = TypeVar("Request")


class LiveRequests(Generic[Request]):
    def __init__(self) -> None:
        # Held while checking for closed/dead and queueing, so no request slips in after.
        self._lock = threading.Lock()
        self._live: set[Request] = set()
        self.closed = threading.Event()
        self.failure: BaseException | None = None  # what killed the thread; None while it runs

    def admit(
        self, request: Request, future: Future[Any], enqueue: Callable[[Request], None]
    ) -> None:
        """Queue the request with `enqueue`, or fail its future at once if the engine is gone."""
        refusal: VlmqError | None = None
        with self._lock:
            if self.failure is not None:
                refusal = died(self.failure)
            elif self.closed.is_set():
                refusal = EngineClosedError("the engine is closed")
            else:
                self._live.add(request)
                future.add_done_callback(lambda _: self._forget(request))
                enqueue(request)
        if refusal is not None:
            future.set_exception(refusal)

    def close(self, wake_thread: Callable[[], None]) -> None:
        """Refuse new requests from now on; `wake_thread` tells the thread to stop."""
        with self._lock:
            self.closed.set()
            wake_thread()

    def die(self, error: BaseException) -> list[Request]:
        """Record why the thread died; the live requests, for the caller to fail."""
        with self._lock:
            self.failure = error
            return list(self._live)

    def count(self) -> int:
        """Requests live now: queued, in the thread's hands, or running."""
        with self._lock:
            return len(self._live)

    def snapshot(self) -> list[Request]:
        with self._lock:
            return list(self._live)

    def _forget(self, request: Request) -> None:
        with self._lock:
            self._live.discard(request)


def died(cause: BaseException) -> EngineDiedError:
    return EngineDiedError(f"the engine's thread died: {type(cause).__name__}: {cause}")


class AbortRequests:
    """Futures whose requests were asked to stop (`LanguageEngine.abort`), until they are done.

    Any thread may ask; the engine thread reads `pending()` between steps and fails those it
    holds, so only that thread ever resolves a future.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[Future[Any]] = set()

    def ask(self, future: Future[Any], live: LiveRequests[Request],
            future_of: Callable[[Request], Future[Any]]) -> None:
        if future.done() or all(future_of(request) is not future for request in live.snapshot()):
            return  # finished, or never this engine's: nothing to drop
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def pending(self) -> frozenset[Future[Any]]:
        with self._lock:
            return frozenset(self._futures)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)
