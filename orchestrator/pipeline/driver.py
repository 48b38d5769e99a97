"""The pipeline: jobs in, outcomes out as they finish, over a cluster of vision and generator
actors.

Per job: its images are decoded and hashed in CPU tasks; each image gets a content-addressed
token range from the allocator and features from a vision actor (one call per image key while
its reference is cached, even while it is still running); then a generator actor chosen by the
router generates it, reading the features from the object store. The driver holds references
only. An actor that dies under a request costs an attempt; the request goes on elsewhere (or to
the restarted actor), alone on its generator, until `max_attempts`. A job's own errors end it
at once.

Nothing waits without a deadline. An actor that died is probed until it answers; Ray reporting
it DEAD, or `actor_restart_timeout_s` without an answer, gives up on it, and once every actor
of its kind is given up on, the requests that need one fail with `NoActorAvailableError`. While
the allocator's Redis is unreachable, jobs that need new token ranges wait for it (counted in
`progress.waiting_for_allocator`) up to `allocator_outage_timeout_s`; jobs whose ranges are
already known go on meanwhile, without a round trip.

Jobs come in two ways: `submit(job)` from any thread, answered with a future, or `run(jobs)`,
which iterates `jobs` on the caller's thread, at most `capacity` jobs ahead of the outcomes it
has yielded. Both feed one event loop on the pipeline's own thread, and at most `capacity`
jobs run at once; more wait for room. Every job ends with exactly one outcome: `close()` ends
the running ones with `PipelineClosedError` (and `run()`'s iterator after them), `cancel(id)`
one with `JobCancelledError`, its generate call cancelled in Ray, which aborts it in the
generator's engine. A jobs iterable that raises has the outcomes of the jobs it admitted
yielded first, then its error re-raised.

The pool can be resized while jobs run (`resize`, the scaler's lever): new actors take work once
they answer; drained ones take no new work, finish what they run, and are then killed, so no
request is lost to a scale-down. `capacity` follows the generators that take requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ray
from ray.exceptions import RayActorError, RayTaskError

from orchestrator.allocator.handle import get_or_start_allocator
from orchestrator.allocator.range_client import LeasedRangeClient
from orchestrator.metrics import definitions as metrics
from orchestrator.pipeline.actor_load import ActorLoad
from orchestrator.pipeline.actor_pool import ActorPool, wait_until_up
from orchestrator.pipeline.admission import Admission
from orchestrator.pipeline.config import PipelineConfig
from orchestrator.pipeline.errors import PipelineClosedError
from orchestrator.pipeline.feature_cache import FeatureCache, FeatureEntry
from orchestrator.pipeline.image_key import ImageKey, image_key_from_encoded
from orchestrator.pipeline.image_prep import PreparedImage, prepare_image
from orchestrator.pipeline.job import (
    IMAGE_PLACEHOLDER,
    JobFailure,
    JobOutcome,
    JobRequest,
    job_id_of,
    validate_job,
)
from orchestrator.pipeline.router import Router
from orchestrator.pipeline.slot_counts import PoolCounts
from orchestrator.pipeline.vision_balancer import VisionBalancer
from worker.actors.generator import GenerationCall
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.engines.model_fingerprint import model_fingerprint
from worker.errors import (
    AllocatorStateUnavailableError,
    InvalidRequestError,
    JobCancelledError,
    JobError,
    StaleEpochError,
    VlmqError,
)
from worker.generation import GenerationResult
from worker.images.decoding import check_image_count
from worker.images.visual_tokens import visual_layout
from worker.images.vlm_family import detect_family, read_image_params
from worker.span import Span, SpanLayout
from worker.token_range import TokenRange

log = logging.getLogger(__name__)


class RequestGaveUpError(VlmqError):
    """Actors kept dying under a request (a poison request, or a failing cluster)."""


@dataclass
class Progress:
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0  # attempts repeated after an actor died
    vision_calls: int = 0
    feature_reuses: int = 0  # images served from a cached or in-flight vision call
    waiting_for_allocator: int = 0  # jobs waiting now for the allocator's Redis to come back
    waiting_for_room: int = 0  # jobs submitted over capacity, waiting now for a running one to end

    @property
    def in_flight(self) -> int:
        return self.submitted - self.succeeded - self.failed


@dataclass(frozen=True, slots=True)
class _Image:
    key: ImageKey
    pixels: Any  # ObjectRef[PIL.Image.Image], read by a vision actor only
    layout: SpanLayout


@dataclass(eq=False)
class _InFlight:
    """One job from its submission to its outcome: what delivers it and what cancel() stops."""

    job: JobRequest  # as the caller passed it: it may be no JobRequest at all
    deliver: Callable[[JobOutcome], None]
    task: asyncio.Task[JobOutcome] | None = None  # set on the loop's thread once accepted
    generating: Any = None  # the ObjectRef of its generate call while one runs
    attempts: int = 0  # generation attempts so far
    is_cancelled: bool = False  # cancel() was called; its outcome is JobCancelledError


class _Availability(Protocol):
    """What the router and the vision balancer know of their actors being up."""

    # Slots not routed to, so not counted alive: the drain took them out (`_resize` uncounts
    # them), or their actor is gone for good.
    draining: set[int]
    retired: set[int]
    is_up: list[bool]  # by slot: False while its actor is down (uncounted since it went down)

    async def set_up(self, index: int, is_up: bool) -> None: ...

    async def set_gone(self, index: int, why: str) -> None: ...


class _Slots(_Availability, Protocol):
    """What resizing needs of a balancer: slots to fill, open, drain and empty."""

    async def add_slot(self) -> int: ...

    async def open(self, index: int) -> None: ...

    def begin_drain(self, count: int) -> list[int]: ...

    async def wait_drained(self, index: int) -> None: ...

    async def retire(self, index: int) -> None: ...


class Pipeline:
    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.progress = Progress()
        model_dir = Path(config.engine.model_dir)
        model_config = json.loads((model_dir / "config.json").read_text())
        self._hidden_size = int(model_config.get("text_config", model_config)["hidden_size"])
        self._image_params = read_image_params(model_dir, detect_family(model_config))
        self._special_pieces = HFTextTokenizer.from_model_dir(model_dir).special_pieces
        self._fingerprint = model_fingerprint(model_dir)
        # Everything that changes an image's embedding goes into its key.
        self._preprocessing = {
            **dataclasses.asdict(self._image_params),
            "engine": config.engine.kind.value,
        }
        self._features = FeatureCache(config.feature_cache_bytes)
        self._prepare: Any = ray.remote(prepare_image).options(
            num_returns=2, num_cpus=config.cpus_per_image_task
        )
        self._pool: ActorPool | None = None
        # (id of the pool's actor list, index) of every actor being waited for after it died.
        self._coming_up: set[tuple[int, int]] = set()
        self._probes: set[asyncio.Task[None]] = set()  # kept, so they are not collected
        self._ranges: LeasedRangeClient | None = None
        self._router: Router | None = None
        self._vision: VisionBalancer | None = None
        # The range client makes blocking calls; one thread makes them all, in order.
        self._allocation_thread = ThreadPoolExecutor(1, thread_name_prefix="vlmq-allocation")
        self._sync_scheduled = False  # a sync of the range client is queued on that thread
        # Guards what callers' threads read and change: _closing and the jobs in flight.
        self._lock = threading.Lock()
        self._closing = False
        self._by_id: dict[str, _InFlight] = {}  # jobs in flight with a usable job_id
        self._num_in_flight = 0  # every job in flight, with a usable job_id or not
        self._job_tasks: set[asyncio.Task[JobOutcome]] = set()  # on the loop's thread
        self._room = Admission(config.max_jobs_in_flight)  # jobs running at once
        self._resizing: set[asyncio.Task[None]] = set()  # actors starting or draining
        self._num_waiting = 0  # jobs waiting for a generator slot, for their gauge
        self._alive = {"vision": 0, "generator": 0}  # actors routed to, for their gauge
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="vlmq-pipeline", daemon=True
        )

    @property
    def router(self) -> Router:
        assert self._router is not None, "start() the pipeline first"
        return self._router

    @property
    def vision(self) -> VisionBalancer:
        assert self._vision is not None, "start() the pipeline first"
        return self._vision

    @property
    def pool(self) -> ActorPool:
        assert self._pool is not None, "start() the pipeline first"
        return self._pool

    def start(self) -> None:
        """Start the actors and the allocator; return when every actor is ready."""
        allocator = get_or_start_allocator(self.config.allocator)
        self._ranges = LeasedRangeClient(allocator, self.config.allocator)
        self._pool = ActorPool(self.config.pool, self.config.engine)
        self._pool.wait_until_ready(self.config.ready_timeout_s)
        self._alive = {"vision": len(self._pool.vision), "generator": len(self._pool.generators)}
        metrics.set_desired_actors("vision", self.config.pool.num_vision_actors)
        metrics.set_desired_actors("generator", self.config.pool.num_generator_actors)
        for role, count in self._alive.items():
            metrics.set_alive_actors(role, count)
        self._loop_thread.start()
        self._router, self._vision = asyncio.run_coroutine_threadsafe(
            self._make_balancers(), self._loop
        ).result()

    @property
    def capacity(self) -> int:
        """Jobs to keep in flight so every generator stays busy; `submit` takes more (they wait)."""
        return self._room.limit

    def resize(self, vision: int, generators: int) -> concurrent.futures.Future[None]:
        """Head for this many actors of each role, from any thread; resolves once begun.

        Actors are started, or the least busy ones drained (no new work; killed once their
        running requests end). Counts already heading there change nothing; a growth the
        cluster's GPUs cannot hold (unless GPUs may join) is refused with a warning.
        """
        return asyncio.run_coroutine_threadsafe(self._resize(vision, generators), self._loop)

    def actor_counts(self) -> PoolCounts:
        """How the slots of each role stand now, from any thread."""
        return asyncio.run_coroutine_threadsafe(self._counts(), self._loop).result()

    def actor_loads(self) -> tuple[ActorLoad, ...]:
        """Every actor the pipeline holds now (vision first), its state and what it runs; from
        any thread but the pipeline's own."""
        return asyncio.run_coroutine_threadsafe(self._actor_loads(), self._loop).result(10.0)

    @property
    def in_flight(self) -> int:
        """Jobs submitted (or admitted by `run()`) whose outcome has not been delivered yet."""
        with self._lock:
            return self._num_in_flight

    def submit(self, job: JobRequest) -> concurrent.futures.Future[JobOutcome]:
        """Hand the pipeline one job, from any thread, without waiting; its outcome comes later.

        The future always resolves with the job's `JobOutcome`, failed ones included (a bad
        job, a job_id already in flight, `close()`, `cancel()`). Its callbacks run on the
        pipeline's thread: they may submit and cancel, but must not block. Raises
        `PipelineClosedError` once the pipeline is closed, or before it is started.
        """
        outcome: concurrent.futures.Future[JobOutcome] = concurrent.futures.Future()
        self._submit(job, outcome.set_result)
        return outcome

    def cancel(self, job_id: str) -> bool:
        """End the job now, from any thread: its outcome is a `JobCancelledError` failure.

        Its generate call, if one runs, is cancelled in Ray, which aborts it in the generator's
        engine and frees its batch slot; image work already started may finish (and stay
        cached for other jobs). True if the job was in flight: then its outcome is the
        cancellation, even if it was just finishing; False (and nothing done) otherwise.
        """
        with self._lock:
            record = self._by_id.get(job_id)
            if record is None:
                return False
            if not record.is_cancelled:
                record.is_cancelled = True
                # Under the lock: the job's outcome (and close()) cannot come first.
                self._loop.call_soon_threadsafe(self._stop_job, record)
            return True

    def run(self, jobs: Iterable[JobRequest]) -> Iterator[JobOutcome]:
        """Outcomes in the order jobs finish, one per admitted job.

        `jobs` is iterated here, on the caller's thread, between outcomes, and at most
        `capacity` jobs ahead of them. If `jobs` raises, the jobs it admitted still end and
        their outcomes come first; then its error is raised here. After `close()`, the jobs
        still running come out failed with `PipelineClosedError` and the iterator ends.
        """
        self._check_open()
        outcomes: queue.SimpleQueue[JobOutcome] = queue.SimpleQueue()
        source = iter(jobs)
        num_admitted = num_yielded = 0
        is_feeding = True
        feed_error: Exception | None = None
        while True:
            can_feed = is_feeding and num_admitted - num_yielded < self.capacity
            if not can_feed and num_yielded == num_admitted:
                break
            try:
                # Outcomes that are ready go first; wait for one only when no job can go in.
                outcome = outcomes.get(block=not can_feed)
            except queue.Empty:
                try:
                    job = next(source)
                except StopIteration:
                    is_feeding = False
                    continue
                except Exception as error:  # the iterable's own: raised after the outcomes
                    feed_error, is_feeding = error, False
                    continue
                try:
                    self._submit(job, outcomes.put)
                except PipelineClosedError:  # close() came: no more jobs; the admitted end
                    is_feeding = False
                    continue
                num_admitted += 1
                continue
            num_yielded += 1
            yield outcome
        if feed_error is not None:
            raise feed_error

    def close(self) -> None:
        """End every job in flight (each gets its outcome), then `run()`s, then the actors."""
        with self._lock:
            self._closing = True  # no job is submitted after this
        if self._loop_thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._end_jobs(), self._loop).result()
        if self._pool is not None:
            self._pool.kill()
        if self._loop_thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop_probes(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
            self._loop.close()
        # An allocation stuck on an unreachable Redis must not hold close() up; its thread
        # ends when that call does.
        self._allocation_thread.shutdown(wait=False, cancel_futures=True)

    def _check_open(self) -> None:
        if self._closing or not self._loop_thread.is_alive():
            raise PipelineClosedError("the pipeline is closed (or was never started)")

    def _submit(self, job: JobRequest, deliver: Callable[[JobOutcome], None]) -> None:
        """Register the job and have the loop take it; `deliver` gets its outcome there."""
        with self._lock:
            self._check_open()
            job_id = _cancel_key(job)
            if job_id is not None and job_id in self._by_id:
                self._loop.call_soon_threadsafe(self._refuse_duplicate, job, deliver)
                return
            record = _InFlight(job, deliver)
            if job_id is not None:
                self._by_id[job_id] = record
            self._num_in_flight += 1
            metrics.JOBS_IN_FLIGHT.set(self._num_in_flight)
            # Under the lock, so close(), which takes it first, finds the job accepted.
            self._loop.call_soon_threadsafe(self._accept, record)

    def _refuse_duplicate(self, job: JobRequest, deliver: Callable[[JobOutcome], None]) -> None:
        # Job IDs key cancel(): a second job under one ID could not be told from the first.
        self.progress.submitted += 1
        self.progress.failed += 1
        error = InvalidRequestError(f"job {job_id_of(job)} is already in flight")
        deliver(JobOutcome(job_id_of(job), None, _failure(error), 0))

    def _accept(self, record: _InFlight) -> None:
        self.progress.submitted += 1
        task = self._loop.create_task(self._job(record))
        record.task = task
        self._job_tasks.add(task)
        # A done callback, not the coroutine, delivers: a task cancelled before it started
        # never runs its coroutine at all.
        task.add_done_callback(lambda _: self._finish(record))

    async def _job(self, record: _InFlight) -> JobOutcome:
        """One job's outcome, once there is room for it among the jobs that run."""
        self.progress.waiting_for_room += 1
        try:
            await self._room.acquire()
        finally:
            self.progress.waiting_for_room -= 1
        try:
            return await self._run_job(record)
        finally:
            self._room.release()

    def _finish(self, record: _InFlight) -> None:
        """Deliver the job's outcome: its own, or why it was stopped."""
        assert record.task is not None
        self._job_tasks.discard(record.task)
        with self._lock:
            job_id = _cancel_key(record.job)
            if job_id is not None and self._by_id.get(job_id) is record:
                del self._by_id[job_id]
            self._num_in_flight -= 1
            metrics.JOBS_IN_FLIGHT.set(self._num_in_flight)
            is_cancelled = record.is_cancelled
        if is_cancelled or record.task.cancelled():  # by cancel(), or by close()
            job_id = job_id_of(record.job)  # whatever the caller passed in, it gets its outcome
            error: VlmqError = (
                JobCancelledError(f"job {job_id} was cancelled")
                if is_cancelled
                else PipelineClosedError(f"job {job_id}: the pipeline was closed before it ended")
            )
            outcome = JobOutcome(job_id, None, _failure(error), record.attempts)
        else:
            outcome = record.task.result()
        if outcome.ok:
            self.progress.succeeded += 1
        else:
            self.progress.failed += 1
        record.deliver(outcome)

    def _stop_job(self, record: _InFlight) -> None:
        """cancel(): stop the job's generate call in its generator, and the job here."""
        if record.generating is not None:
            # Its awaiting, which the task's cancel ends, has already asked Ray for the result,
            # so the error the cancelled call leaves is read, not reported as unhandled.
            ray.cancel(record.generating)
        if record.task is not None:
            record.task.cancel()

    async def _end_jobs(self) -> None:
        """End every job in flight as closed; return once each outcome is delivered."""
        tasks = list(self._job_tasks)
        for task in tasks:
            task.cancel()
        # Each job's _finish was queued before this wakes: callbacks run in order.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop_probes(self) -> None:
        """Cancel the waits for restarting actors, and resizing: the actors are gone."""
        waits = [*self._probes, *self._resizing]
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    async def _counts(self) -> PoolCounts:
        return PoolCounts(self.vision.counts(), self.router.counts())

    async def _actor_loads(self) -> tuple[ActorLoad, ...]:
        pool = self.pool.config
        roles = (
            ("vision", self.vision, self.pool.vision_names, pool.gpus_per_vision_actor),
            ("generator", self.router, self.pool.generator_names, pool.gpus_per_generator_actor),
        )
        return tuple(
            # A slot added a moment before its actor is started has no name yet.
            ActorLoad(role, names[index] if index < len(names) else "", state, running, gpus)
            for role, slots, names, gpus in roles
            for index, (state, running) in sorted(slots.states().items())
        )

    async def _resize(self, vision: int, generators: int) -> None:
        if vision < 1 or generators < 1:
            raise ValueError(f"a pool needs an actor of each role, got {vision} and {generators}")
        have_vision = self.vision.counts().serving
        have_generators = self.router.counts().serving
        if (vision > have_vision or generators > have_generators) and not self.pool.fits(
            max(vision, have_vision), max(generators, have_generators)
        ):
            log.warning("not resizing to %d vision and %d generator actors: the cluster's GPUs "
                        "cannot hold them", vision, generators)
            return
        roles: list[tuple[_Slots, list[Any], Callable[[int], Any], int, int]] = [
            (self.vision, self.pool.vision, self.pool.start_vision, vision, have_vision),
            (self.router, self.pool.generators, self.pool.start_generator, generators,
             have_generators),
        ]
        for balancer, actors, start, wanted, have in roles:
            for _ in range(wanted - have):
                index = await balancer.add_slot()
                actor = start(index)
                self._coming_up.discard((id(actors), index))  # a new actor: probe it afresh
                self._track(self._bring_in(balancer, actors, index, actor))
            for index in balancer.begin_drain(have - wanted):
                if balancer.is_up[index]:  # a down one was uncounted when it went down
                    self._report_alive(actors, -1)  # no longer routed to
                self._track(self._drain(balancer, actors, index))
        self._fit_room()

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._resizing.add(task)
        task.add_done_callback(self._resizing.discard)

    async def _bring_in(self, balancer: _Slots, actors: list[Any], index: int, actor: Any
                        ) -> None:
        """Open the new actor's slot once it answers; give the slot back if it never does."""
        try:
            await asyncio.wait_for(actor.stats.remote(), self.config.ready_timeout_s)
        except Exception:
            log.warning("a new actor did not start within %g s; ending it",
                        self.config.ready_timeout_s, exc_info=True)
            self.pool.kill_one(actors, index)
            await balancer.retire(index)
            return
        await balancer.open(index)
        self._report_alive(actors, +1)
        self._fit_room()

    async def _drain(self, balancer: _Slots, actors: list[Any], index: int) -> None:
        """Kill the draining actor once nothing runs on it; its slot is then empty."""
        await balancer.wait_drained(index)
        self.pool.kill_one(actors, index)
        await balancer.retire(index)

    def _fit_room(self) -> None:
        """Admit as many jobs as the generators that take requests keep busy."""
        open_generators = max(self.router.counts().open, 1)
        self._room.set_limit(2 * self.config.max_in_flight_per_generator * open_generators)

    async def _make_balancers(self) -> tuple[Router, VisionBalancer]:
        # Made on the loop's thread: their asyncio primitives belong to that loop.
        router = Router(
            len(self.pool.generators),
            self.config.max_in_flight_per_generator,
            self.config.affinity_slack,
        )
        return router, VisionBalancer(len(self.pool.vision))

    async def _run_job(self, record: _InFlight) -> JobOutcome:
        job = record.job
        attempts = 0
        try:
            images = await self._prepare_images(job)
            spans = await self._spans(images, refresh=False)
            while True:
                attempts += 1
                record.attempts = attempts
                try:
                    # After a failure the request runs alone, so it can harm only itself.
                    result = await self._generate(record, images, spans, alone=attempts > 1)
                    return JobOutcome(job.job_id, result, None, attempts)
                except (RayActorError, RayTaskError) as error:
                    if isinstance(error, JobError):
                        raise  # the job's own fault: retrying cannot help
                    if isinstance(_cause(error), StaleEpochError):
                        # The allocator lost its state and opened a new epoch: new ranges.
                        spans = await self._spans(images, refresh=True)
                    if attempts >= self.config.max_attempts:
                        raise RequestGaveUpError(
                            f"job {job.job_id} failed on each of {attempts} attempts "
                            f"(an actor died under it, or its engine failed); last: "
                            f"{type(_cause(error)).__name__}"
                        ) from error
                    self.progress.retries += 1
                    metrics.ATTEMPT_RETRIES.inc()
                    log.warning("job %s: attempt %d failed (%s); retrying", job.job_id,
                                attempts, type(_cause(error)).__name__)
        except Exception as error:  # every job ends with an outcome, whatever happened
            return JobOutcome(job_id_of(job), None, _failure(_cause(error)), attempts)

    async def _prepare_images(self, job: JobRequest) -> list[_Image]:
        # First of all: a job's own bad fields fail it here, typed, before a task or an actor
        # sees them (an image that is not bytes would make its task raise).
        validate_job(job)
        check_image_count(len(job.images), self.config.image_limits)
        refs = [
            self._prepare.remote(source, self.config.image_limits, self.config.image_sources)
            for source in job.images
        ]
        answers = await asyncio.gather(*(meta for meta, _ in refs), return_exceptions=True)
        failed = [(answer, pixels) for answer, (_, pixels) in zip(answers, refs, strict=True)
                  if isinstance(answer, BaseException)]
        if failed:
            # A task that raised (its worker died) left both its objects as errors. Read the
            # image's too, or Ray logs it as an unhandled error when its reference goes.
            await asyncio.gather(*(pixels for _, pixels in failed), return_exceptions=True)
            raise failed[0][0]
        prepared = [answer for answer in answers if isinstance(answer, PreparedImage)]
        for meta in prepared:
            meta.check()
        return [
            _Image(
                key=image_key_from_encoded(meta.digest, self._fingerprint, self._preprocessing),
                pixels=pixels,
                layout=visual_layout(meta.width, meta.height, self._image_params).span_layout(
                    self._special_pieces
                ),
            )
            for meta, (_, pixels) in zip(prepared, refs, strict=True)
        ]

    async def _spans(self, images: list[_Image], refresh: bool) -> dict[ImageKey, Span]:
        ranges = await self._ranges_waiting_out_outages(images, refresh)
        return {
            image.key: Span(_alias(image.key), ranges[image.key], image.layout)
            for image in images
        }

    async def _ranges_waiting_out_outages(
        self, images: list[_Image], refresh: bool
    ) -> dict[ImageKey, TokenRange]:
        """The images' token ranges; while Redis is unreachable, wait for it, up to a deadline.

        Ranges the client knows, or can carve from its lease, come at once on the loop's
        thread: a job that needs no new IDs never queues behind an allocation stuck on Redis.
        """
        assert self._ranges is not None
        if not refresh:
            known = self._ranges.allocate_local(
                [(image.key.digest, image.layout.num_rows) for image in images]
            )
            if known is not None:
                self._sync_soon()
                return dict(zip((image.key for image in images), known, strict=True))
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        delay = 0.05
        waiting = False
        try:
            while True:
                try:
                    return await loop.run_in_executor(
                        self._allocation_thread, self._ranges_for, images, refresh
                    )
                except Exception as error:
                    if not isinstance(_cause(error), AllocatorStateUnavailableError):
                        raise
                    waited = time.monotonic() - started
                    if waited >= self.config.allocator_outage_timeout_s:
                        raise AllocatorStateUnavailableError(
                            f"no token ranges for {waited:.0f} s (allocator_outage_timeout_s "
                            f"is {self.config.allocator_outage_timeout_s:g}): {_cause(error)}"
                        ) from error
                    if not waiting:
                        waiting = True
                        self.progress.waiting_for_allocator += 1
                        log.warning("allocator unavailable; waiting for it: %s", _cause(error))
                    # Backoff between attempts: the allocation thread serves others meanwhile.
                    await asyncio.sleep(
                        min(delay, self.config.allocator_outage_timeout_s - waited)
                    )
                    delay = min(delay * 2, 2.0)
        finally:
            if waiting:
                self.progress.waiting_for_allocator -= 1

    def _sync_soon(self) -> None:
        """Register locally carved ranges with the allocator, on the allocation thread."""
        assert self._ranges is not None
        if self._sync_scheduled or not self._ranges.sync_due:
            return
        self._sync_scheduled = True
        future = self._allocation_thread.submit(self._sync_quietly)
        future.add_done_callback(lambda _: setattr(self, "_sync_scheduled", False))

    def _sync_quietly(self) -> None:
        assert self._ranges is not None
        try:
            self._ranges.sync()
        except Exception:  # the ranges stay unregistered; the next sync takes them along
            log.warning("syncing token ranges with the allocator failed", exc_info=True)

    def _ranges_for(self, images: list[_Image], refresh: bool) -> dict[ImageKey, TokenRange]:
        assert self._ranges is not None
        if refresh:
            self._ranges.refresh()
        return {
            image.key: self._ranges.allocate(image.key.digest, image.layout.num_rows)
            for image in images
        }

    async def _image_features(self, image: _Image) -> FeatureEntry:
        """The image's features, computed once per key while its reference is cached."""
        for _ in range(self.config.max_attempts):
            entry = self._features.get(image.key) if self.config.dedup_images else None
            if self.config.dedup_images:
                metrics.MM_CACHE_QUERIES.inc()
            if entry is None:
                entry = await self._embed(image)
            else:
                self.progress.feature_reuses += 1
                metrics.MM_CACHE_HITS.inc()
            try:
                await entry.num_rows  # ready, or raises why not; the features stay put
                return entry
            except RayActorError:
                # Its actor died: route around it until it is back, and embed the image again.
                if self._features.peek(image.key) is entry:
                    self._features.drop(image.key)
                    self.progress.retries += 1
                    metrics.ATTEMPT_RETRIES.inc()
                await self._take_down(self.pool.vision, entry.vision_index, self.vision,
                                      entry.vision_actor)
        raise RequestGaveUpError(f"the vision actors died on image {image.key.digest[:16]}")

    async def _embed(self, image: _Image) -> FeatureEntry:
        assert self._vision is not None
        index = await self._vision.acquire()
        actor = self.pool.vision[index]
        features, num_rows = actor.embed.options(num_returns=2).remote(image.pixels)
        loop = asyncio.get_running_loop()

        def release(_: object) -> None:
            # Runs on a Ray thread. The coroutine is made on the loop's thread, so a call that
            # ends after close() (the loop is gone) leaves no coroutine never awaited.
            with contextlib.suppress(RuntimeError):  # closed: nothing is left to balance
                loop.call_soon_threadsafe(lambda: loop.create_task(self._release_vision(index)))

        num_rows.future().add_done_callback(release)
        entry = FeatureEntry(
            features, num_rows, image.layout.num_image_rows * self._hidden_size * 2, index, actor
        )
        self.progress.vision_calls += 1
        if self.config.dedup_images:
            self._features.put(image.key, entry)
        return entry

    async def _release_vision(self, index: int) -> None:
        assert self._vision is not None
        await self._vision.release(index)

    async def _generate(
        self, record: _InFlight, images: list[_Image], spans: dict[ImageKey, Span], alone: bool
    ) -> GenerationResult:
        assert self._router is not None
        job = record.job
        unique = list(dict.fromkeys(image.key for image in images))
        by_key = {image.key: image for image in images}
        entries = await asyncio.gather(*(self._image_features(by_key[k]) for k in unique))
        prompt = job.prompt
        for image in images:
            prompt = prompt.replace(IMAGE_PLACEHOLDER, _alias(image.key), 1)
        call = GenerationCall(
            job.job_id, prompt, tuple(spans[k] for k in unique), job.sampling
        )
        self._report_waiting(+1)
        try:
            index = await (self._router.acquire_alone() if alone else self._router.acquire(unique))
        finally:
            self._report_waiting(-1)
        try:
            generator = self.pool.generators[index]
            # Kept while it runs, so that cancel() can cancel it in Ray.
            record.generating = generator.generate.remote(
                call, *(entry.features for entry in entries)
            )
            try:
                result: GenerationResult = await record.generating
            finally:
                record.generating = None
            return result
        except RayActorError:
            await self._take_down(self.pool.generators, index, self._router, generator)
            raise
        finally:
            await self._router.release(index, alone)

    def _report_waiting(self, change: int) -> None:
        self._num_waiting += change
        metrics.JOBS_WAITING_FOR_GENERATOR.set(self._num_waiting)

    def _report_alive(self, actors: list[Any], change: int) -> None:
        role = "vision" if actors is self.pool.vision else "generator"
        self._alive[role] += change
        metrics.set_alive_actors(role, self._alive[role])

    async def _take_down(
        self, actors: list[Any], index: int, balancer: _Availability, handle: Any
    ) -> None:
        """Route around an actor that died until Ray has it answering again, or give up on it.

        The probe gives up at once when Ray reports the actor DEAD, else after
        `actor_restart_timeout_s`; the balancer then fails the requests waiting for an actor
        of this kind once none is left. The probe watches the actor that died, not its slot:
        once a drain has retired the slot and a new actor holds it, nothing the old actor's
        probe learns is about the slot any more; nor is a failure its caller met on the old
        actor (`handle`, the one it called) that comes in after.
        """
        if actors[index] is not handle:
            return  # the slot holds a newer actor since: the failure was the old one's
        key = (id(actors), index)
        if key in self._coming_up:
            return
        self._coming_up.add(key)
        # A draining actor was uncounted when its drain began: its death is not counted again.
        is_counted = index not in balancer.draining and index not in balancer.retired
        if is_counted:
            self._report_alive(actors, -1)
        await balancer.set_up(index, False)

        def is_watched() -> bool:
            # A retired slot filled again holds a new actor: `_resize` probes that one afresh.
            return actors[index] is handle

        async def give_up(why: str) -> None:
            if is_watched():
                await balancer.set_gone(index, why)

        async def bring_up() -> None:
            is_up = await wait_until_up(handle, self.config.actor_restart_timeout_s, give_up)
            if is_up and is_watched():
                self._coming_up.discard(key)
                # Counted again only if routed to again: a drain may have begun meanwhile.
                if index not in balancer.draining and index not in balancer.retired:
                    self._report_alive(actors, +1)
                await balancer.set_up(index, True)
            # Dead for good: it stays in _coming_up, so no later failure probes it again.

        self._probes.add(asyncio.get_running_loop().create_task(bring_up()))
        self._probes = {probe for probe in self._probes if not probe.done()}


def _cancel_key(job: object) -> str | None:
    """The ID cancel() finds a job by; None for a job without a usable one (it will fail)."""
    job_id = getattr(job, "job_id", None) if isinstance(job, JobRequest) else None
    return job_id if isinstance(job_id, str) and job_id else None


def _failure(error: BaseException) -> JobFailure:
    return JobFailure(type(error).__name__, str(error), is_job_error=isinstance(error, JobError))


def _alias(key: ImageKey) -> str:
    return f"<$IMG_{key.digest[:24]}$>"


def _cause(error: BaseException) -> BaseException:
    """The exception raised inside a Ray task, rather than Ray's wrapper around it."""
    cause = getattr(error, "cause", None) if isinstance(error, RayTaskError) else None
    return cause if isinstance(cause, BaseException) else error
