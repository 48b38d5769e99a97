"""The metrics the actors export through Ray (`ray.util.metrics`), and the type they are
declared with, which the orchestrator's own metrics share.

Names follow vLLM's where the meaning is the same (`vllm:num_requests_running` is
`vlmq_num_requests_running` here), so its dashboards and alerts carry over. Ray's Prometheus
export prefixes every name with `ray_` and adds the worker's own tags (WorkerId, NodeAddress,
...). Tags here stay few and bounded: the role and the actor's name, never a job ID.

A metric records nothing where Ray is not connected, so the plain actor classes still run in
tests without a cluster. Each record is one call per request or image, never per token.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.util import metrics as ray_metrics

# Ray's export sends a gauge only if it was set since the last export: a gauge set once (the
# pool's size) or rarely (a quiet actor's running count) would vanish from Prometheus. So each
# process sets its gauges' last values again this often (below Ray's 10 s export interval).
GAUGE_REFRESH_S = 5.0

# Seconds: from a fast tiny model on a CPU to a long generation on a large one.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                   300.0, 600.0)


class MetricKind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str  # as declared; Prometheus shows it as `ray_<name>`
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()  # histogram buckets' upper bounds

    def __post_init__(self) -> None:
        if not self.name.startswith("vlmq_"):
            raise ValueError(f"metric {self.name!r}: vlmq's metrics are named vlmq_*")
        if self.kind is MetricKind.COUNTER and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r}: counters end in _total, as exported")
        if (self.kind is MetricKind.HISTOGRAM) != bool(self.boundaries):
            raise ValueError(f"metric {self.name!r}: boundaries are for histograms only")

    @property
    def exported_name(self) -> str:
        return f"ray_{self.name}"

    @property
    def exported_series(self) -> tuple[str, ...]:
        """The names of its series on Ray's Prometheus endpoint."""
        if self.kind is MetricKind.HISTOGRAM:
            return tuple(f"{self.exported_name}_{part}" for part in ("bucket", "sum", "count"))
        return (self.exported_name,)


class Metric:
    """One declared metric, made in Ray the first time it is recorded in a process."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self._made: Any = None

    def _ray(self) -> Any:
        if self._made is None:
            spec = self.spec
            if spec.kind is MetricKind.COUNTER:
                self._made = ray_metrics.Counter(spec.name, spec.description, spec.tag_keys)
            elif spec.kind is MetricKind.GAUGE:
                self._made = ray_metrics.Gauge(spec.name, spec.description, spec.tag_keys)
            else:
                self._made = ray_metrics.Histogram(
                    spec.name, spec.description, list(spec.boundaries), spec.tag_keys
                )
        return self._made

    def inc(self, value: float = 1.0, **tags: str) -> None:
        if value > 0:  # Ray refuses a zero increment; nothing to count then
            self._ray().inc(value, tags=tags or None)

    def set(self, value: float, **tags: str) -> None:
        self._ray().set(value, tags=tags or None)
        _KEEPER.remember(self, tuple(sorted(tags.items())), lambda: value)

    def sample(self, read: Callable[[], float], **tags: str) -> None:
        """Set the gauge from `read()` now and at every refresh: for a value that changes
        where nothing records it (an engine moving requests from its queue to its batch)."""
        self._ray().set(read(), tags=tags or None)
        _KEEPER.remember(self, tuple(sorted(tags.items())), read)

    def observe(self, value: float, **tags: str) -> None:
        self._ray().observe(max(0.0, value), tags=tags or None)


class _GaugeKeeper:
    """Sets every gauge of this process again, from a daemon thread started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[
            tuple[int, tuple[tuple[str, str], ...]], tuple[Metric, Callable[[], float]]
        ] = {}
        self._thread: threading.Thread | None = None

    def remember(
        self, metric: Metric, tags: tuple[tuple[str, str], ...], read: Callable[[], float]
    ) -> None:
        with self._lock:
            self._values[(id(metric), tags)] = (metric, read)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._refresh, name="vlmq-gauges", daemon=True
                )
                self._thread.start()

    def _refresh(self) -> None:
        stop = threading.Event()  # never set: the thread ends with its process
        while not stop.wait(GAUGE_REFRESH_S):
            with self._lock:
                kept = list(self._values.items())
            for (_, tags), (metric, read) in kept:
                try:
                    value = read()
                except Exception:  # what it reads is gone (an engine closing): skip it once
                    continue
                metric._ray().set(value, tags=dict(tags) or None)


_KEEPER = _GaugeKeeper()


def counter(name: str, description: str, *tag_keys: str) -> Metric:
    return Metric(MetricSpec(name, MetricKind.COUNTER, description, tag_keys))


def gauge(name: str, description: str, *tag_keys: str) -> Metric:
    return Metric(MetricSpec(name, MetricKind.GAUGE, description, tag_keys))


def histogram(name: str, description: str, *tag_keys: str) -> Metric:
    return Metric(MetricSpec(name, MetricKind.HISTOGRAM, description, tag_keys, LATENCY_BUCKETS))


# Tags: role is "generator" or "vision"; actor is the actor's name ({prefix}-generator-N).
# As vLLM's: a generator's requests in its engine's batch, and those waiting for a place in it
# (a vision actor's running images: it batches nothing, so none wait).
NUM_REQUESTS_RUNNING = gauge(
    "vlmq_num_requests_running",
    "Requests in the generator's batch (images being embedded, for a vision actor)",
    "role", "actor",
)
NUM_REQUESTS_WAITING = gauge(
    "vlmq_num_requests_waiting", "Requests in the generator waiting for a place in its batch",
    "actor",
)
TIME_TO_FIRST_TOKEN = histogram(
    "vlmq_time_to_first_token_seconds",
    "From the request reaching the generator's engine to its first token", "actor",
)
ENGINE_QUEUE_TIME = histogram(
    "vlmq_request_engine_queue_time_seconds",
    "From the request reaching the engine to its prefill starting (batch slot wait)", "actor",
)
PREFILL_TIME = histogram(
    "vlmq_request_prefill_time_seconds", "The request's prefill", "actor",
)
DECODE_TIME = histogram(
    "vlmq_request_decode_time_seconds", "First decode step until the request finished", "actor",
)
PROMPT_TOKENS = counter(
    "vlmq_prompt_tokens_total", "Prompt tokens prefilled, image tokens included", "actor",
)
GENERATION_TOKENS = counter("vlmq_generation_tokens_total", "Tokens generated", "actor")
# Counted in tokens, as vLLM does, for each request whose engine keeps a prefix cache
# (exllamav2: `GenerationResult.num_cached_tokens`); the transformers engine keeps none, and
# then these stay absent.
PREFIX_CACHE_QUERIES = counter(
    "vlmq_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache", "actor",
)
PREFIX_CACHE_HITS = counter(
    "vlmq_prefix_cache_hits_total", "Prompt tokens found in the prefix cache", "actor",
)
VISION_CALLS = counter("vlmq_vision_calls_total", "Images embedded by a vision actor", "actor")
VISION_TIME = histogram(
    "vlmq_vision_embed_time_seconds", "One image's vision encoding", "actor",
)
ACTOR_FAILURES = counter(
    "vlmq_actor_request_failures_total", "Requests (or images) that raised in the actor",
    "role", "actor", "error_type",
)

ACTOR_METRICS: tuple[Metric, ...] = (
    NUM_REQUESTS_RUNNING, NUM_REQUESTS_WAITING, TIME_TO_FIRST_TOKEN, ENGINE_QUEUE_TIME,
    PREFILL_TIME, DECODE_TIME, PROMPT_TOKENS, GENERATION_TOKENS, PREFIX_CACHE_QUERIES,
    PREFIX_CACHE_HITS, VISION_CALLS, VISION_TIME, ACTOR_FAILURES,
)
