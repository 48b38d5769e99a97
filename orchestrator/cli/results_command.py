"""`vlmq results BATCH -o out.jsonl [--errors err.jsonl]`: OpenAI's output and error files.

Talks to Redis only: imports no torch, Ray or transformers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchestrator.cli.exit_codes import ExitCode
from orchestrator.cli.options import json_option, namespace_option, redis_options
from orchestrator.cli.output import console, print_json, print_lines
from orchestrator.redis_connection import RedisSettings

_OUT = click.Path(dir_okay=False, writable=True, path_type=Path)


@click.command(short_help="write a batch's results as OpenAI output and error files")
@click.argument("batch")
@click.option("-o", "--output", required=True, type=_OUT, metavar="FILE",
              help="the output file: one line per succeeded request")
@click.option("--errors", type=_OUT, metavar="FILE",
              help="the error file: one line per failed, cancelled or expired request, and per "
                   "bad input line")
@json_option
@namespace_option
@redis_options
def results(
    *,
    redis_settings: RedisSettings,
    batch: str,
    output: Path,
    errors: Path | None,
    as_json: bool,
    namespace: str,
) -> None:
    """Write BATCH's results in OpenAI's Batch output (and error) file formats.

    Works while the batch still runs: the files hold what is finished now, and running the
    command again later writes the larger set (each file is replaced whole, never half
    written). Lines are matched to requests by their custom_id.

    Exits 0 when the batch is done, 5 when some of its requests are not finished yet, 3 when
    there is no such batch.
    """
    from orchestrator.batches.batch_record import NoSuchBatchError
    from orchestrator.batches.results_export import export_results
    from orchestrator.cli.command_error import CommandError
    from orchestrator.queue.client import Client

    with Client(redis_settings, namespace=namespace, load_library=False) as client:
        try:
            report = export_results(client, batch, output, errors)
        except NoSuchBatchError as error:
            raise CommandError(str(error), ExitCode.NOT_FOUND) from None
    summary = {
        "batch": batch,
        "status": report.info.status,
        "output_file": str(output),
        "error_file": None if errors is None else str(errors),
        "outputs": report.outputs,
        "errors": report.errors,
        "unfinished": report.unfinished,
        "request_counts": report.info.as_json()["request_counts"],
    }
    if as_json:
        print_json(summary)
    else:
        error_part = (f"{report.errors} errors to {errors}" if errors is not None
                      else f"{report.errors} errors (not written: give --errors FILE)")
        lines = [f"batch {batch} ({report.info.status}): wrote {report.outputs} results to "
                 f"{output}, {error_part}"]
        if report.unfinished:
            lines.append(f"{report.unfinished} requests are not finished yet: run this again "
                         "later for them")
        print_lines(console(), lines)
    if report.unfinished:
        sys.exit(ExitCode.PARTIAL)
