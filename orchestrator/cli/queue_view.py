"""A queue's status for people (lines) and for scripts (a JSON object)."""

from __future__ import annotations

from typing import Any

from orchestrator.queue.client import QueueStatus

LANE_NAMES = ("high", "normal", "low")  # lane 0 is served first


def queue_json(status: QueueStatus) -> dict[str, Any]:
    return {
        "queue": status.queue,
        "unfinished": status.unfinished,
        "queued": dict(zip(LANE_NAMES, status.queued_per_lane, strict=True)),
        "running": status.running,
        "retrying": status.retrying,
        "servers": list(status.servers),
        "counters": dict(sorted(status.counters.items())),
    }


def queue_lines(status: QueueStatus) -> list[str]:
    lanes = ", ".join(
        f"{name} {n}" for name, n in zip(LANE_NAMES, status.queued_per_lane, strict=True)
    )
    lines = [
        f"queue {status.queue}: {status.unfinished} unfinished ({lanes} queued; "
        f"{status.running} running, {status.retrying} waiting to retry)"
    ]
    if status.servers:
        lines.append(f"served by {len(status.servers)}: {', '.join(status.servers)}")
    else:
        lines.append(
            f"served by nobody: its jobs wait until a `vlmq serve --queue {status.queue}` starts"
        )
    counters = ", ".join(f"{k} {v}" for k, v in sorted(status.counters.items()))
    lines.append(f"counters: {counters or 'none yet'}")
    return lines
