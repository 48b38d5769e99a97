"""`vlmq cancel BATCH` or `vlmq cancel --job ID`. Talks to Redis only."""

from __future__ import annotations

import click

from orchestrator.cli.command_error import CommandError
from orchestrator.cli.exit_codes import ExitCode
from orchestrator.cli.options import json_option, namespace_option, redis_options
from orchestrator.cli.output import console, print_json, print_lines
from orchestrator.redis_connection import RedisSettings


@click.command(short_help="cancel a batch (finished lines are kept) or one job")
@click.argument("batch", required=False)
@click.option("--job", "job_id", metavar="ID", help="cancel this one job instead")
@json_option
@namespace_option
@redis_options
def cancel(
    *,
    redis_settings: RedisSettings,
    batch: str | None,
    job_id: str | None,
    as_json: bool,
    namespace: str,
) -> None:
    """Cancel BATCH: it takes no more lines, its queued requests end batch_cancelled at once
    and its running ones are stopped by their servers; finished requests keep their results.
    With --job ID, cancel one job.

    Exits 0 when cancelled, 1 when the batch had already completed, 3 when there is no such
    batch or job.
    """
    if (batch is None) == (job_id is None):
        raise click.UsageError("give a BATCH or --job ID")
    from orchestrator.batches.batch_record import NoSuchBatchError, read_batch
    from orchestrator.queue.client import Client

    with Client(redis_settings, namespace=namespace) as client:
        if job_id is not None:
            state = client.cancel(job_id)
            if as_json:
                print_json({"job": job_id, "state": state.value})
            else:
                print_lines(console(), [f"job {job_id}: {state.value}"])
            return
        assert batch is not None
        try:
            before = read_batch(client, batch)
        except NoSuchBatchError as error:
            raise CommandError(str(error), ExitCode.NOT_FOUND) from None
        if before.status == "completed":
            raise CommandError(f"batch {batch} has completed: nothing is left to cancel")
        unfinished = client.batch(batch).cancel()
        after = read_batch(client, batch, expire_due=False)
    if as_json:
        print_json({"batch": batch, "status": after.status, "cancelled": unfinished,
                    "request_counts": after.as_json()["request_counts"]})
    else:
        print_lines(console(), [
            f"batch {batch}: {after.status}; {unfinished} unfinished requests cancelled "
            f"(running ones stop shortly), {after.counts.succeeded} finished ones kept"
        ])
