"""One warm floor per Ray cluster, whichever servers scale on it.

Ray's autoscaler keeps a single `request_resources` request per cluster: each call replaces
the last. Two autoscaling `vlmq serve`s on one cluster (two queues, two models; or two servers
of one queue) would each replace the other's floor. So no scaler calls it: each hands its
share (the bundles its warm actors need) to one named actor of the cluster, the
`WarmFloorKeeper`, which asks Ray for the union of every live share, and is the only caller of
`request_resources` in vlmq.

A share lives `ttl_s` unless renewed (`SharedWarmFloor` renews it every third of that), so a
server killed with -9 stops holding room after a minute or so; a server that stops cleanly
withdraws its share at once. The keeper is detached and restarts if it dies; it then starts
empty, and every scaler's next renewal fills it again (Ray's request stays as it was
meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

log = logging.getLogger(__name__)

KEEPER_NAME = "vlmq-warm-floor"
# One keeper per cluster, whatever Ray namespace each deployment's actors use.
KEEPER_NAMESPACE = "vlmq"
DEFAULT_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """Room to keep on the cluster: one bundle per actor, each with its node label selector."""

    bundles: tuple[dict[str, float], ...]
    label_selectors: tuple[dict[str, str], ...]

    def __post_init__(self) -> None:
        if len(self.bundles) != len(self.label_selectors):
            raise ValueError("a resource request has one label selector per bundle")


@dataclass(frozen=True, slots=True)
class FloorShare:
    owner: str  # the scaler's server (its consumer name)
    request: ResourceRequest


def request_from_ray(request: ResourceRequest) -> None:
    from ray.autoscaler.sdk import request_resources

    selectors = list(request.label_selectors)
    request_resources(
        bundles=list(request.bundles),
        bundle_label_selectors=selectors if any(selectors) else None,
    )


class WarmFloorKeeper:
    """The actor: every live share, and Ray asked for their union whenever it changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shares: dict[str, tuple[FloorShare, float]] = {}  # owner -> share, expiry
        self._requested: ResourceRequest | None = None
        threading.Thread(target=self._expire_forever, name="vlmq-warm-floor",
                         daemon=True).start()

    def set_share(self, share: FloorShare, ttl_s: float) -> ResourceRequest:
        """Hold `share` for `ttl_s` (replacing its owner's last); the union Ray is asked for."""
        with self._lock:
            self._shares[share.owner] = (share, time.monotonic() + ttl_s)
            return self._apply()

    def drop_share(self, owner: str) -> ResourceRequest:
        with self._lock:
            self._shares.pop(owner, None)
            return self._apply()

    def requested(self) -> ResourceRequest | None:
        """What Ray was last asked for (None before the first share)."""
        with self._lock:
            return self._requested

    def shares(self) -> dict[str, ResourceRequest]:
        """Each live share's request, by owner."""
        with self._lock:
            return {owner: share.request for owner, (share, _) in self._shares.items()}

    def _apply(self) -> ResourceRequest:
        now = time.monotonic()
        for owner in [o for o, (_, expiry) in self._shares.items() if expiry <= now]:
            log.info("warm floor: %s's share expired", owner)
            del self._shares[owner]
        shares = [share for _, (share, _) in sorted(self._shares.items())]
        union = ResourceRequest(
            bundles=tuple(b for s in shares for b in s.request.bundles),
            label_selectors=tuple(sel for s in shares for sel in s.request.label_selectors),
        )
        if union != self._requested:
            request_from_ray(union)
            self._requested = union
        return union

    def _expire_forever(self) -> None:
        stop = threading.Event()  # never set: the thread ends with the actor's process
        while not stop.wait(5.0):
            try:
                with self._lock:
                    self._apply()
            except Exception:  # Ray's GCS briefly away: the next pass tries again
                log.warning("warm floor: could not update Ray's request", exc_info=True)


def warm_floor_keeper() -> Any:
    """The cluster's keeper, started by the first caller; Ray must be initialised."""
    keeper_class: Any = ray.remote(WarmFloorKeeper)
    return keeper_class.options(
        name=KEEPER_NAME, namespace=KEEPER_NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_task_retries=-1,
    ).remote()


class SharedWarmFloor:
    """One scaler's share of the cluster's warm floor, through its keeper."""

    def __init__(self, owner: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.owner = owner
        self.ttl_s = ttl_s
        self._keeper: Any = None
        self._sent: ResourceRequest | None = None
        self._sent_at = 0.0

    def request(self, request: ResourceRequest) -> None:
        """Hold room for `request` (this scaler's whole share); blocking, from any thread."""
        now = time.monotonic()
        if request == self._sent and now - self._sent_at < self.ttl_s / 3:
            return  # held, and not due for renewal
        ray.get(self._keeper_handle().set_share.remote(FloorShare(self.owner, request),
                                                       self.ttl_s))
        self._sent, self._sent_at = request, now

    def release(self) -> None:
        """Withdraw this scaler's share (its server stops)."""
        if self._sent is not None:
            ray.get(self._keeper_handle().drop_share.remote(self.owner))
            self._sent = None

    def _keeper_handle(self) -> Any:
        if self._keeper is None:
            self._keeper = warm_floor_keeper()
        return self._keeper
