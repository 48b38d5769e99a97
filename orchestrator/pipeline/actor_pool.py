"""Starting the vision and generator actors, each pinned to its share of a GPU.

Actors are named (`{prefix}-vision-0`, `{prefix}-generator-1`, ...) so the Ray dashboard shows
which is which, restarted by Ray when their process dies, and never retried by Ray: the
pipeline decides where a failed request goes next.

GPU shares are checked against the cluster's GPUs before any actor starts (`check_pool_fits`):
a fractional share must fit on one GPU, so a GPU holds floor(1/share) actors of that share,
and a pool that cannot be packed fails at once with `PoolPlacementError` instead of waiting in
Ray's queue (unless `gpus_may_join`: an autoscaling cluster). An actor that still waits (a GPU
taken by something else, or GPUs that have not joined) makes `wait_until_ready` say which ones
wait and for what.

The pool can grow and shrink while it runs (the scaler): `start_vision` / `start_generator`
put a new actor in a slot (a new one at the end, or one emptied before), `kill_one` ends one
for good. Names carry a serial number that is never reused within a pool, since Ray may hold a
killed actor's name for a while.

Vision actors can be placed apart from the generators (a cheaper GPU group, when jobs carry
many images): `vision_resources` are custom Ray resources each vision actor holds, and
`vision_label_selector` the node labels it must run on (Ray's `label_selector`).

`wait_until_up` is the restart probe: it waits for an actor that died to answer again, and
gives up on it, calling back with why, when Ray reports it DEAD (no restart will come) or when
it stays down past a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
from ray._private.label_utils import validate_label_selector
from ray.exceptions import ActorDiedError, RayActorError

from worker.actors.fault_injection import FaultInjection
from worker.actors.generator import GeneratorActor, GeneratorActorConfig
from worker.actors.vision import VisionActor, VisionActorConfig
from worker.engines import EngineConfig
from worker.errors import VlmqError

log = logging.getLogger(__name__)

# Ray counts resources in units of 1/10,000: a share of 2/3 GPU is 6,667 of a GPU's 10,000.
_RAY_UNITS = 10_000
# How long one probe of an actor that is being waited for may go unanswered, once its deadline
# has passed (before it, a probe may take the whole deadline).
_LATE_PROBE_S = 5.0


class ActorsNotReadyError(VlmqError):
    """Some actors could not start in time, most often for want of GPUs."""


class PoolPlacementError(ActorsNotReadyError):
    """The pool's GPU shares cannot be placed on the cluster's GPUs, however long it waits."""


@dataclass(frozen=True, slots=True)
class PoolConfig:
    num_vision_actors: int = 1
    num_generator_actors: int = 2
    # GPU share per actor: 0.5 lets a vision and a generator actor share one GPU.
    gpus_per_vision_actor: float = 0.5
    gpus_per_generator_actor: float = 0.5
    # Logical CPUs each actor holds while it lives. Ray's default of 1 would let a small
    # cluster's actors starve the image tasks; the GPU share is what places an actor.
    cpus_per_actor: float = 0.0
    name_prefix: str = "vlmq"
    ray_namespace: str = "vlmq"
    # An autoscaling cluster may add GPUs after start: then the pool is not checked against
    # the GPUs it has now, and actors wait in Ray's queue until GPUs join (or the timeout).
    gpus_may_join: bool = False
    generator_faults: FaultInjection = field(default_factory=FaultInjection)
    # Custom Ray resources each vision actor holds (e.g. {"vision_gpu": 1}, offered only by a
    # separate GPU group), and node labels it must run on; empty: next to the generators.
    vision_resources: Mapping[str, float] = field(default_factory=dict)
    vision_label_selector: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_vision_actors < 1 or self.num_generator_actors < 1:
            raise ValueError("a pool needs at least one vision and one generator actor")
        for name, amount in self.vision_resources.items():
            if name in ("CPU", "GPU", "memory") or not 0 < amount < math.inf:
                raise ValueError(
                    f"vision_resources holds custom resources with positive amounts "
                    f"(CPU and GPU have their own fields), got {name}={amount!r}"
                )
        # Ray's own check of a selector (keys as Kubernetes label keys, values with optional
        # operators), here so a bad one fails the configuration, not the first actor's start.
        if problem := validate_label_selector(dict(self.vision_label_selector)):
            raise ValueError(f"vision_label_selector: {problem}")
        for kind, share in self.gpu_shares:
            if share < 0:
                raise ValueError(f"GPU shares cannot be negative, got {share:g} for {kind}")
            if share > 1 and share != int(share):
                # Ray places a share above one GPU on whole GPUs only.
                raise ValueError(
                    f"a GPU share above 1 must be a whole number of GPUs, got {share:g} for {kind}"
                )

    @property
    def gpu_shares(self) -> tuple[tuple[str, float], ...]:
        return (
            ("vision actors", self.gpus_per_vision_actor),
            ("generator actors", self.gpus_per_generator_actor),
        )

    @property
    def gpu_demand(self) -> tuple[tuple[str, int, float], ...]:
        """(kind, number of actors, GPU share of each)."""
        return (
            ("vision", self.num_vision_actors, self.gpus_per_vision_actor),
            ("generator", self.num_generator_actors, self.gpus_per_generator_actor),
        )


def gpus_needed(config: PoolConfig) -> int:
    """The fewest GPUs the pool's actors can be placed on.

    A whole share takes that many whole GPUs. Fractional shares are packed: each actor's share
    must fit on one GPU, so a GPU holds floor(1/share) actors of one share, or a mix whose
    shares sum to at most 1 (in Ray's units of 1/10,000).
    """
    whole = sum(n * int(share) for _, n, share in config.gpu_demand if share >= 1)
    fractional = [
        (n, round(share * _RAY_UNITS)) for _, n, share in config.gpu_demand if 0 < share < 1
    ]
    sizes = [(n, max(units, 1)) for n, units in fractional if n]
    return whole + _fewest_gpus(sizes)


def _fewest_gpus(items: list[tuple[int, int]]) -> int:
    """Bins of `_RAY_UNITS` that hold `n` items of each size; two sizes at most (BFS by bin)."""
    if not items:
        return 0
    (n_a, a), (n_b, b) = [*items, (0, _RAY_UNITS)][:2]
    layer = {(n_a, n_b)}
    gpus = 0
    while (0, 0) not in layer:
        gpus += 1
        following = set()
        for left_a, left_b in layer:
            for taken_a in range(min(left_a, _RAY_UNITS // a) + 1):
                # Filling the rest of the GPU with the other size is never worse than less.
                taken_b = min(left_b, (_RAY_UNITS - taken_a * a) // b)
                following.add((left_a - taken_a, left_b - taken_b))
        layer = following
    return gpus


def check_pool_fits(config: PoolConfig, cluster_gpus: float) -> None:
    """Raise `PoolPlacementError` if the pool's GPU shares cannot fit on `cluster_gpus` GPUs."""
    needed = gpus_needed(config)
    if needed <= cluster_gpus:
        return
    asked = ", ".join(
        f"{n} {kind} actor{'s' if n != 1 else ''} at {share:.3g} GPU"
        for kind, n, share in config.gpu_demand
        if n and share
    )
    per_gpu = ", ".join(
        f"{_RAY_UNITS // round(share * _RAY_UNITS)} at {share:.3g}"
        for _, n, share in config.gpu_demand
        if n and 0 < share < 1
    )
    raise PoolPlacementError(
        f"the pool cannot be placed: {asked} need {needed} GPUs, and the cluster has "
        f"{cluster_gpus:g}. A fractional GPU share must fit on one GPU, so one GPU holds "
        f"floor(1/share) actors of a share ({per_gpu or 'none fractional'}); the rest of "
        f"the GPU stays unused. Choose shares that divide a GPU (1/2, 1/3, ...), fewer "
        f"actors, or more GPUs"
    )


class ActorPool:
    def __init__(self, config: PoolConfig, engine: EngineConfig) -> None:
        self.config = config
        self.engine = engine
        if ray.is_initialized() and not config.gpus_may_join:
            check_pool_fits(config, ray.cluster_resources().get("GPU", 0))  # type: ignore[no-untyped-call]
        self._vision_class: Any = ray.remote(VisionActor)
        self._generator_class: Any = ray.remote(GeneratorActor)
        # Lists by slot: the router's and vision balancer's indexes. A slot keeps the handle
        # of a killed actor until a new one takes it.
        self.vision: list[Any] = []
        self.generators: list[Any] = []
        self.vision_names: list[str] = []
        self.generator_names: list[str] = []
        self._serials = {"vision": 0, "generator": 0}
        for i in range(config.num_vision_actors):
            self.start_vision(i)
        for i in range(config.num_generator_actors):
            self.start_generator(i)

    @property
    def actors(self) -> list[Any]:
        return [*self.vision, *self.generators]

    def start_vision(self, index: int) -> Any:
        """Start a vision actor in slot `index` (a new slot at the end, or an emptied one)."""
        name = self._next_name("vision")
        placement: dict[str, Any] = {}
        if self.config.vision_resources:
            placement["resources"] = dict(self.config.vision_resources)
        if self.config.vision_label_selector:
            placement["label_selector"] = dict(self.config.vision_label_selector)
        actor = self._vision_class.options(
            name=name, num_gpus=self.config.gpus_per_vision_actor, **placement,
            **self._common_options(),
        ).remote(VisionActorConfig(name, self.engine))
        _put(self.vision, index, actor)
        _put(self.vision_names, index, name)
        return actor

    def start_generator(self, index: int) -> Any:
        """Start a generator actor in slot `index` (a new slot at the end, or an emptied one)."""
        name = self._next_name("generator")
        actor = self._generator_class.options(
            name=name, num_gpus=self.config.gpus_per_generator_actor, **self._common_options(),
        ).remote(GeneratorActorConfig(name, self.engine, self.config.generator_faults))
        _put(self.generators, index, actor)
        _put(self.generator_names, index, name)
        return actor

    def fits(self, num_vision: int, num_generators: int) -> bool:
        """Whether that many actors can be placed on the cluster's GPUs (always, when GPUs may
        join)."""
        if self.config.gpus_may_join:
            return True
        resized = dataclasses.replace(
            self.config, num_vision_actors=max(num_vision, 1),
            num_generator_actors=max(num_generators, 1),
        )
        cluster_gpus: float = ray.cluster_resources().get("GPU", 0)  # type: ignore[no-untyped-call]
        return gpus_needed(resized) <= cluster_gpus

    def kill_one(self, actors: list[Any], index: int) -> None:
        """End the actor in slot `index` for good (no restart)."""
        with contextlib.suppress(Exception):  # already gone: nothing to end
            ray.kill(actors[index], no_restart=True)

    def _next_name(self, role: str) -> str:
        serial = self._serials[role]
        self._serials[role] += 1
        return f"{self.config.name_prefix}-{role}-{serial}"

    def _common_options(self) -> dict[str, Any]:
        return {
            "namespace": self.config.ray_namespace,
            "num_cpus": self.config.cpus_per_actor,
            "max_restarts": -1,
            "max_task_retries": 0,
        }

    def wait_until_ready(self, timeout_s: float) -> None:
        """Return once every actor answers; raise `ActorsNotReadyError` naming those that don't."""
        probes = {
            actor.stats.remote(): name
            for actor, name in zip(self.actors, self._names(), strict=True)
        }
        deadline = time.monotonic() + timeout_s
        pending = list(probes)
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        if pending:
            waiting = [probes[probe] for probe in pending]
            raise ActorsNotReadyError(self._describe_waiting(waiting, timeout_s))
        ray.get(list(probes))  # an actor whose constructor failed raises here

    def kill(self) -> None:
        for actors in (self.vision, self.generators):
            for index in range(len(actors)):
                self.kill_one(actors, index)

    def _names(self) -> list[str]:
        return [*self.vision_names, *self.generator_names]

    def _describe_waiting(self, waiting: list[str], timeout_s: float) -> str:
        total = ray.cluster_resources().get("GPU", 0)  # type: ignore[no-untyped-call]
        free = ray.available_resources().get("GPU", 0)  # type: ignore[no-untyped-call]
        asked = (
            self.config.num_vision_actors * self.config.gpus_per_vision_actor
            + self.config.num_generator_actors * self.config.gpus_per_generator_actor
        )
        # Not ready after the timeout: waiting for resources, or still loading its model.
        return (
            f"{len(waiting)} actors not ready after {timeout_s:.0f}s (waiting for resources "
            f"or still starting): {', '.join(sorted(waiting))}. The pool asks for {asked:g} "
            f"GPUs; the cluster has {total:g}, {free:g} free"
        )


def _put(slots: list[Any], index: int, value: Any) -> None:
    if index == len(slots):
        slots.append(value)
    else:
        slots[index] = value


async def wait_until_up(
    actor: Any, timeout_s: float, give_up: Callable[[str], Awaitable[None]]
) -> bool:
    """Wait until an actor that died answers again: True once it does.

    Calls `give_up(why)` at most once: at once when Ray reports the actor DEAD (killed with
    `no_restart`, or out of restarts: Ray never brings it back; then returns False), or when it
    has not answered within `timeout_s` (then keeps asking, less eagerly, since a restart that
    is only slow may still come back).
    """
    started = time.monotonic()
    given_up = False
    while True:
        left = timeout_s - (time.monotonic() - started)
        try:
            # A call to a restarting actor waits for the restart, so each probe is bounded.
            limit = _LATE_PROBE_S if given_up else max(left, 0.0)
            await asyncio.wait_for(_answer(actor), limit)
            return True
        except RayActorError as error:
            if isinstance(error, ActorDiedError) and await asyncio.to_thread(
                actor_is_dead, actor, error
            ):
                await give_up(
                    "is dead for good (Ray reports it DEAD: killed with no_restart, or its "
                    "restarts are exhausted)"
                )
                return False
            await asyncio.sleep(0.2)  # the probe's own pacing while Ray restarts the actor
        except TimeoutError:
            pass
        if not given_up and time.monotonic() - started >= timeout_s:
            given_up = True
            log.warning("actor %s still down after %.0f s; giving up on it", actor, timeout_s)
            await give_up(
                f"has been down for {timeout_s:g} s (restarts exhausted, or it cannot be "
                f"placed again?)"
            )


async def _answer(actor: Any) -> None:
    await actor.stats.remote()


def actor_is_dead(actor: Any, error: RayActorError | None = None) -> bool:
    """Whether Ray's GCS holds the actor as DEAD, a final state: Ray will not restart it.

    `ActorDiedError` alone does not say so (a request in flight when a restartable actor dies
    gets it too). `ray.util.state` needs the dashboard, so this reads the GCS actor table
    (`ray._private.state`, Ray's DeveloperAPI); if that read fails, the answer is "not known
    dead" and the restart deadline decides.
    """
    actor_id = error.actor_id if error is not None and error.actor_id else None
    try:
        if actor_id is None:
            actor_id = actor._actor_id.hex()
        info = ray._private.state.actors(actor_id)
    except Exception:  # an unreadable table must not stop the probe
        log.debug("cannot read the state of actor %s", actor_id, exc_info=True)
        return False
    return isinstance(info, dict) and info.get("State") == "DEAD"
