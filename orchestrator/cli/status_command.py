"""`vlmq status`: a queue's backlog, its servers and their actors' load, one batch's counts (live
with `--watch`), or one job's state. Talks to Redis only (`--ray-dashboard` adds Ray's view):
imports no torch, Ray or transformers."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import click

from orchestrator.cli.batch_view import BatchView, read_batch_view
from orchestrator.cli.batch_watch import watch_batch
from orchestrator.cli.command_error import CommandError
from orchestrator.cli.exit_codes import ExitCode
from orchestrator.cli.job_view import job_json, job_lines
from orchestrator.cli.load_view import load_json, load_lines, running_by_actor
from orchestrator.cli.options import json_option, namespace_option, queue_option, redis_options
from orchestrator.cli.output import console, print_json, print_lines
from orchestrator.cli.queue_view import queue_json, queue_lines
from orchestrator.queue.client import Client
from orchestrator.redis_connection import RedisSettings

if TYPE_CHECKING:
    from orchestrator.metrics.cluster_view import ClusterView


@click.command(short_help="show a queue, a batch (live with --watch) or a job")
@click.argument("batch", required=False)
@click.option("--job", "job_id", metavar="ID", help="show this job: state, deliveries, history")
@queue_option
@click.option("--watch", is_flag=True,
              help="follow BATCH live (a progress bar, counts, rate, ETA) until it is done")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              metavar="S", help="seconds between two readings of --watch")
@click.option("--ray-dashboard", metavar="URL",
              help="also show the cluster: the actors per role, their state and GPUs, from "
                   "this Ray dashboard (http://HEAD:8265; Ray's token from $RAY_AUTH_TOKEN or "
                   "~/.ray/auth_token)")
@json_option
@namespace_option
@redis_options
def status(
    *,
    redis_settings: RedisSettings,
    batch: str | None,
    job_id: str | None,
    queue: str,
    watch: bool,
    interval: float,
    as_json: bool,
    namespace: str,
    ray_dashboard: str | None,
) -> None:
    """Show a queue, a batch or a job.

    \b
    vlmq status                    the queue: backlog per lane, running, counters, and each
                                   server's actors: state, GPU share, requests running
    vlmq status BATCH              the batch's jobs counted per state
    vlmq status BATCH --watch      the same, live, until no job of the batch is unfinished
    vlmq status --job ID           one job's state and history

    Exits 3 when the batch or job does not exist (or its results expired), 4 when Redis
    cannot be reached. With --watch and no terminal (a pipe), one line per interval.
    """
    if batch is not None and job_id is not None:
        raise click.UsageError("give a BATCH or --job ID, not both")
    if watch and batch is None:
        raise click.UsageError("--watch follows a batch: give its BATCH id")
    with Client(redis_settings, namespace=namespace, load_library=False) as client:
        if job_id is not None:
            _show_job(client, job_id, as_json)
        elif batch is not None:
            _show_batch(client, batch, watch=watch, interval_s=interval, as_json=as_json)
        else:
            _show_queue(client, queue, as_json, ray_dashboard)


def _show_job(client: Client, job_id: str, as_json: bool) -> None:
    job = client.status(job_id)
    if as_json:
        print_json(job_json(job))
    else:
        print_lines(console(), job_lines(job))


def _show_batch(
    client: Client, batch_id: str, *, watch: bool, interval_s: float, as_json: bool
) -> None:
    def read() -> BatchView:
        return read_batch_view(client, batch_id)

    if watch:
        watch_batch(read, console(), interval_s=interval_s, as_json=as_json)
    elif as_json:
        print_json(read().as_json())
    else:
        print_lines(console(), [read().summary()])


def _show_queue(client: Client, queue: str, as_json: bool, ray_dashboard: str | None) -> None:
    status = client.queue_status(queue)
    loads = client.server_loads(queue, status.servers)
    cluster = None if ray_dashboard is None else _cluster(ray_dashboard)
    if as_json:
        view = queue_json(status)
        view["loads"] = load_json(loads)
        if cluster is not None:
            view["cluster"] = {"actors": [dataclasses.asdict(actor) for actor in cluster.actors]}
        print_json(view)
        return
    lines = queue_lines(status) + load_lines(loads)
    if cluster is not None:
        lines += _cluster_lines(cluster, running_by_actor(loads))
    print_lines(console(), lines)


def _cluster(address: str) -> ClusterView:
    # Imported here: the state API loads Ray, which the Redis-only views never need.
    from orchestrator.metrics.cluster_view import ClusterUnreachableError, cluster_view

    try:
        return cluster_view(address)
    except ClusterUnreachableError as error:
        raise CommandError(f"the Ray dashboard at {address} did not answer: {error}",
                           ExitCode.FAILED) from None


def _cluster_lines(cluster: ClusterView, running: dict[str, int]) -> list[str]:
    """Ray's view of the actors, with what each runs where a server of the queue says."""
    lines = []
    for role in ("vision", "generator", "allocator"):
        actors = cluster.of_role(role)
        gpus = sum(actor.num_gpus for actor in actors if actor.state == "ALIVE")
        lines.append(f"{role}: {cluster.num_alive(role)} of {len(actors)} alive, {gpus:g} GPUs")
        for actor in actors:
            load = f"  running {running[actor.name]}" if actor.name in running else ""
            lines.append(f"  {actor.name}  {actor.state}  GPU {actor.num_gpus:g}  "
                         f"restarts {actor.num_restarts}{load}")
    return lines
