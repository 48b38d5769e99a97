"""The servers' load, as `vlmq status` shows it: per server, its actors per role, their state,
GPU share and what each runs now (from what each server publishes in Redis)."""

from __future__ import annotations

from typing import Any

from orchestrator.queue.server_load import PublishedLoad, load_fields

ROLES = ("vision", "generator")


def load_json(loads: list[PublishedLoad]) -> list[dict[str, Any]]:
    views: list[dict[str, Any]] = []
    for published in loads:
        load = published.load
        if load is None:
            views.append({"consumer": published.consumer, "problem": published.problem})
            continue
        # Named by the server whose key it is, whatever the value says of itself.
        views.append({**load_fields(load), "consumer": published.consumer})
    return views


def load_lines(loads: list[PublishedLoad]) -> list[str]:
    lines = []
    for published in loads:
        load = published.load
        if load is None:
            lines.append(f"server {published.consumer}: load {published.problem}")
            continue
        lines.append(f"server {published.consumer}: {load.held} of {load.capacity} jobs held")
        for role in ROLES:
            actors = load.of_role(role)
            if not actors:
                continue
            running = sum(a.running for a in actors)
            gpus = sum(a.gpus for a in actors)
            lines.append(f"  {role}: {len(actors)} actors, {gpus:g} GPUs, {running} running")
            lines += [f"    {a.name}  {a.state.value}  GPU {a.gpus:g}  running {a.running}"
                      for a in actors]
    return lines


def running_by_actor(loads: list[PublishedLoad]) -> dict[str, int]:
    """What each actor runs, by its Ray name, over every server's load."""
    return {actor.name: actor.running
            for published in loads if published.load is not None
            for actor in published.load.actors}
