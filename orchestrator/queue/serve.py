"""`vlmq serve`: a Pipeline on a Ray cluster, fed by a QueueServer on one queue.

SIGTERM and SIGINT drain (see `orchestrator/queue/server.py`); a second signal does not cut
the drain short, the grace period does. `ServerThread` runs the same server on a thread of
its own, for `vlmq demo` and the benchmarks, which submit from the main thread.

Given a `ScalerConfig`, the scaler (`orchestrator/scaler/`) runs beside the server on its
event loop, resizing the pipeline's pools to the queue's backlog, and stops with it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.pipeline.config import PipelineConfig
from orchestrator.pipeline.driver import Pipeline
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.runner import JobRunner
from orchestrator.queue.server import QueueServer

if TYPE_CHECKING:
    from orchestrator.scaler.config import ScalerConfig
    from orchestrator.scaler.loop import Scaler

log = logging.getLogger(__name__)


def serve(
    queue_config: QueueConfig, pipeline_config: PipelineConfig,
    scaler_config: ScalerConfig | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain; Ray must be initialised.

    With `scaler_config`, the pools are scaled on the queue's backlog within its bounds.
    """
    pipeline = Pipeline(pipeline_config)
    pipeline.start()
    scaler = None
    try:
        server = QueueServer(queue_config, pipeline)
        _publish_chat_template(queue_config, pipeline_config)
        if scaler_config is not None:
            scaler = make_scaler(scaler_config, queue_config, pipeline)
        asyncio.run(serve_until_signalled(server, pipeline_config.engine.model_dir, scaler))
    finally:
        if scaler is not None:
            scaler.backlog.close()
        pipeline.close()
    counts = ", ".join(f"{k} {v}" for k, v in server.counters.as_dict().items() if v)
    print(f"vlmq serve: stopped ({counts or 'nothing done'})", flush=True)
    return 0


def make_scaler(
    scaler_config: ScalerConfig, queue_config: QueueConfig, pipeline: Pipeline
) -> Scaler:
    """A scaler of the pipeline's pools on the backlog of the server's queue."""
    from orchestrator.scaler.backlog import BacklogReader
    from orchestrator.scaler.loop import Scaler
    from orchestrator.scaler.warm_floor import SharedWarmFloor

    # The floor's share is named after the server, as in the queue's `servers` set.
    return Scaler(scaler_config, pipeline, pipeline.config.pool, BacklogReader(queue_config),
                  floor=SharedWarmFloor(queue_config.consumer))


async def run_with_scaler(server: QueueServer, scaler: Scaler | None) -> None:
    """Run the server, and the scaler beside it until the server has drained."""
    if scaler is None:
        await server.run()
        return
    stopping = asyncio.Event()
    scaling = asyncio.create_task(scaler.run(stopping))
    try:
        await server.run()
    finally:
        stopping.set()
        await scaling


async def serve_until_signalled(
    server: QueueServer, what: str, scaler: Scaler | None = None
) -> None:
    """Run the server; SIGTERM and SIGINT make it drain. Prints one line once it serves."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stopper(server, signum))
    running = asyncio.create_task(run_with_scaler(server, scaler))
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait([running, ready], return_when=asyncio.FIRST_COMPLETED)
    if server.ready.is_set():
        config = server.config
        print(
            f"vlmq serve: serving queue {config.queue!r} of namespace {config.namespace!r} "
            f"with {what} as {config.consumer}, "
            f"up to {server.runner.capacity} jobs at once",
            flush=True,
        )
    ready.cancel()
    await running


def _publish_chat_template(queue_config: QueueConfig, pipeline_config: PipelineConfig) -> None:
    # Here rather than in QueueServer: the server knows a runner, not a model.
    from orchestrator.batches.published_template import publish_chat_template
    from orchestrator.redis_connection import RedisSettings

    client = RedisSettings.of(queue_config.redis_url).sync_client(socket_timeout=10.0)
    try:
        publish_chat_template(
            client, queue_config.namespace, queue_config.queue,
            Path(pipeline_config.engine.model_dir),
        )
    finally:
        client.close()


def _stopper(server: QueueServer, signum: int) -> Callable[[], None]:
    def stop() -> None:
        print(f"vlmq serve: {signal.Signals(signum).name}: draining", flush=True)
        server.stop()

    return stop


class ServerThread:
    """A QueueServer on a thread and event loop of its own."""

    def __init__(self, config: QueueConfig, runner: JobRunner, scaler: Scaler | None = None
                 ) -> None:
        self.server = QueueServer(config, runner)
        self.scaler = scaler
        self._done: Future[object] = Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="vlmq-queue-server", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        ready: Future[object] = asyncio.run_coroutine_threadsafe(
            self.server.ready.wait(), self._loop
        )
        wait([ready, self._done], timeout_s, return_when=FIRST_COMPLETED)
        if self._done.done():
            self._done.result()  # it ended before it was ready: say why
        ready.result(0)  # TimeoutError if it is still not ready

    def stop(self, timeout_s: float = 60.0) -> None:
        """Drain and stop; re-raises what ended the server, if it failed."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.stop)
            self._thread.join(timeout_s)
        self._done.result(0)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            work: Coroutine[Any, Any, None] = run_with_scaler(self.server, self.scaler)
            self._loop.run_until_complete(work)
            self._done.set_result(None)
        except BaseException as error:
            log.exception("queue server failed")
            self._done.set_exception(error)
        finally:
            self._loop.close()
