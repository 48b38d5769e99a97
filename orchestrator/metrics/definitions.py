"""The orchestrator's metrics: the queue server, the pipeline, image preparation, the
allocator and the actor pools. Declared once, here; `EXPORTED` adds the actors' own.

Where vLLM has a metric of the same meaning the name is vLLM's with `vlmq_` for `vllm:`.
Tags stay few and bounded (queue, lane, role, error type), never a job ID. Set where noted.
"""

from __future__ import annotations

from worker.actors.metrics import ACTOR_METRICS, Metric, MetricSpec, counter, gauge, histogram

# The queue server (orchestrator/queue/server.py). queue: the queue's name.
JOBS_CLAIMED = counter("vlmq_jobs_claimed_total", "Deliveries claimed by queue servers", "queue")
JOBS_COMPLETED = counter(
    "vlmq_jobs_completed_total", "Jobs ended by a server's outcome (state: succeeded or "
    "cancelled); failures are counted apart", "queue", "state",
)
JOBS_FAILED = counter(
    "vlmq_jobs_failed_total", "Jobs ended failed, by the error's type", "queue", "error_type",
)
JOBS_RETRIED = counter("vlmq_jobs_retried_total", "Deliveries handed back for a retry", "queue")
JOBS_RELEASED = counter(
    "vlmq_jobs_released_total", "Deliveries handed back unrun (draining, closing)", "queue",
)
JOBS_DEAD_LETTERED = counter(
    "vlmq_jobs_dead_lettered_total", "Jobs that ran out of deliveries", "queue",
)
STALE_COMPLETIONS_REFUSED = counter(
    "vlmq_stale_completions_refused_total",
    "Outcomes Redis refused because the claim was no longer the job's", "queue",
)
REQUEST_QUEUE_TIME = histogram(
    "vlmq_request_queue_time_seconds", "From submission to the claim that ran the job", "queue",
)
E2E_REQUEST_LATENCY = histogram(
    "vlmq_e2e_request_latency_seconds", "From submission to a successful outcome", "queue",
)
QUEUE_BACKLOG = gauge(
    "vlmq_queue_backlog", "Jobs queued and not yet read by a server, per priority lane",
    "queue", "lane",
)
JOBS_PENDING = gauge("vlmq_jobs_pending", "Jobs claimed and running (holding a lease)", "queue")
JOBS_DELAYED = gauge("vlmq_jobs_delayed", "Jobs waiting out a retry backoff", "queue")
OLDEST_JOB_AGE = gauge(
    "vlmq_oldest_job_age_seconds", "Age of the oldest job not yet read by a server (0: none)",
    "queue",
)
JOBS_HELD = gauge("vlmq_jobs_held", "Jobs this server holds now", "queue")

# The pipeline (orchestrator/pipeline/driver.py).
# Not vLLM's num_requests_waiting (a generator's own queue, worker/actors/metrics.py): jobs the
# pipeline holds back because every generator has its fill (the router's backpressure).
JOBS_WAITING_FOR_GENERATOR = gauge(
    "vlmq_pipeline_jobs_waiting_for_generator",
    "Jobs whose features are ready, waiting for a generator to take them",
)
JOBS_IN_FLIGHT = gauge("vlmq_pipeline_jobs_in_flight", "Jobs in the pipeline now")
ATTEMPT_RETRIES = counter(
    "vlmq_pipeline_retries_total", "Attempts repeated because an actor died under them",
)
# The image (multimodal) feature cache, counted in items (images), as vLLM's mm cache.
MM_CACHE_QUERIES = counter("vlmq_mm_cache_queries_total", "Images looked up in the feature cache")
MM_CACHE_HITS = counter(
    "vlmq_mm_cache_hits_total", "Images served from a cached or in-flight vision call",
)
ACTORS_ALIVE = gauge("vlmq_actors_alive", "Actors up and routed to, per role", "role")
ACTORS_DESIRED = gauge(
    "vlmq_actors_desired", "Actors wanted per role: the configured pool, or the scaler's choice",
    "role",
)

# Image preparation (orchestrator/pipeline/image_prep.py, in Ray tasks).
IMAGES_FETCHED = counter(
    "vlmq_images_fetched_total", "Images read from their source (source: inline, url, path)",
    "source",
)
IMAGES_DECODED = counter("vlmq_images_decoded_total", "Images decoded and validated")
IMAGE_FAILURES = counter(
    "vlmq_image_failures_total", "Images that could not be read or decoded, by the error's type",
    "stage", "error_type",
)

# The allocator actor (orchestrator/allocator/token_range_allocator.py).
ALLOCATOR_RANGES = counter(
    "vlmq_allocator_ranges_total", "Token ranges handed out for image keys",
)
ALLOCATOR_LEASES = counter("vlmq_allocator_leases_total", "ID blocks leased to clients")
ALLOCATOR_EPOCH = gauge("vlmq_allocator_epoch", "The epoch IDs are carved from now")

ORCHESTRATOR_METRICS: tuple[Metric, ...] = (
    JOBS_CLAIMED, JOBS_COMPLETED, JOBS_FAILED, JOBS_RETRIED, JOBS_RELEASED, JOBS_DEAD_LETTERED,
    STALE_COMPLETIONS_REFUSED, REQUEST_QUEUE_TIME, E2E_REQUEST_LATENCY, QUEUE_BACKLOG,
    JOBS_PENDING, JOBS_DELAYED, OLDEST_JOB_AGE, JOBS_HELD, JOBS_WAITING_FOR_GENERATOR,
    JOBS_IN_FLIGHT, ATTEMPT_RETRIES, MM_CACHE_QUERIES, MM_CACHE_HITS, ACTORS_ALIVE, ACTORS_DESIRED,
    IMAGES_FETCHED, IMAGES_DECODED, IMAGE_FAILURES, ALLOCATOR_RANGES, ALLOCATOR_LEASES,
    ALLOCATOR_EPOCH,
)

# Every metric vlmq exports, the actors' included.
EXPORTED: tuple[MetricSpec, ...] = tuple(
    metric.spec for metric in (*ORCHESTRATOR_METRICS, *ACTOR_METRICS)
)

ROLES = ("vision", "generator")


def set_desired_actors(role: str, count: int) -> None:
    """What the scaler (or, without one, the pool's configuration) wants of a role."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    if count < 0:
        raise ValueError(f"desired actors of {role}: {count} is below 0")
    ACTORS_DESIRED.set(count, role=role)


def set_alive_actors(role: str, count: int) -> None:
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    ACTORS_ALIVE.set(count, role=role)
