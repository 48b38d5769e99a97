"""`vlmq submit FILE.jsonl`: an OpenAI Batch input file as one batch; run again to resume.

Talks to Redis only: imports no torch, Ray or transformers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from orchestrator.cli.command_error import CommandError
from orchestrator.cli.exit_codes import ExitCode
from orchestrator.cli.options import json_option, namespace_option, queue_option, redis_options
from orchestrator.cli.output import console, print_json, print_lines
from orchestrator.redis_connection import RedisSettings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
MAX_WINDOW_S = 30 * 86400  # results live at most 30 days: a longer window could outlive them
_ERRORS_SHOWN = 20
_PRIORITIES = {"high": 0, "normal": 1, "low": 2}


def parse_duration(text: str) -> float:
    """`24h`, `30m`, `90s`, `2d`, or plain seconds; 1 s to 30 days."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration like 24h, 30m, 90s or 2d")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 1 <= seconds <= MAX_WINDOW_S:
        raise click.BadParameter(f"{text!r} must be between 1 s and 30 days")
    return seconds


@click.command(short_help="submit an OpenAI Batch input file (again: resume it)")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@queue_option
@click.option("--completion-window", default="24h", show_default=True, metavar="DURATION",
              help="lines unfinished this long after the first submit end batch_expired "
                   "(24h, 30m, 90s, 2d)")
@click.option("--priority", type=click.Choice(list(_PRIORITIES)), default="normal",
              show_default=True, help="the lane the batch's jobs wait in")
@click.option("--model", "model_dir", metavar="DIR",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="render chat lines with this model's chat template (default: the one "
                   "`vlmq serve` published for the queue)")
@click.option("--no-wait", is_flag=True,
              help="stop when the queue is full instead of waiting for room (resume later)")
@json_option
@namespace_option
@redis_options
def submit(
    *,
    redis_settings: RedisSettings,
    file: Path,
    queue: str,
    completion_window: str,
    priority: str,
    model_dir: Path | None,
    no_wait: bool,
    as_json: bool,
    namespace: str,
) -> None:
    """Submit FILE, an OpenAI Batch input file (JSONL), as one batch on the queue.

    The batch's ID comes from the file's content and the queue, and each line's job from its
    custom_id: submitting the same file again (after a crash, or to be sure) adds only the
    lines not yet accepted. Bad lines are reported with their line number and reason, are
    recorded as failed lines of the batch, and do not stop the others.

    \b
    vlmq submit requests.jsonl --queue captions
    vlmq status BATCH --watch
    vlmq results BATCH -o output.jsonl --errors errors.jsonl

    Exits 0 when every line was accepted, 5 when some lines had errors (the rest are in),
    1 when the batch is closed (cancelled or expired) or the queue stayed full (--no-wait).
    """
    window_s = parse_duration(completion_window)
    from orchestrator.batches.chat_template import ChatTemplate, ChatTemplateError
    from orchestrator.batches.published_template import published_chat_template
    from orchestrator.batches.submitter import SubmitProgress, submit_batch_file
    from orchestrator.queue.client import Client
    from orchestrator.queue.errors import QueueFullError
    from orchestrator.queue.states import Priority

    with Client(redis_settings, namespace=namespace) as client:
        if model_dir is not None:
            try:
                template: ChatTemplate | None = ChatTemplate.from_model_dir(model_dir)
            except ChatTemplateError as error:
                raise click.BadParameter(str(error), param_hint="--model") from None
        else:
            template = published_chat_template(client.redis, namespace, queue)
        if template is None and _has_chat_lines(file):
            # Refused before the batch is opened: its chat lines would be recorded as failed
            # for good, and a resubmission would not try them again.
            raise CommandError(
                f"queue {queue} has no chat template yet, and {file.name} has chat lines: "
                f"start `vlmq serve --queue {queue}` first (it publishes its model's "
                "template), or pass --model DIR"
            )
        out = console()
        status = out.status("reading", spinner="dots") if sys.stderr.isatty() else None

        def progress(step: SubmitProgress) -> None:
            if status is not None:
                waiting = " (the queue is full: waiting for room)" if step.waiting_for_room else ""
                status.update(f"{step.lines_read} lines read, {step.accepted} accepted, "
                              f"{step.known} already in, {step.line_errors} line errors"
                              f"{waiting}")

        try:
            if status is not None:
                status.start()
            report = submit_batch_file(
                client, file, queue=queue, template=template, completion_window_s=window_s,
                priority=Priority(_PRIORITIES[priority]), wait_when_full=not no_wait,
                on_progress=progress,
            )
        except QueueFullError as full:
            raise CommandError(
                f"queue {queue} is full ({full}); what was accepted stays: submit the same "
                "file again to go on"
            ) from None
        finally:
            if status is not None:
                status.stop()
    summary = {
        "batch": report.batch_id,
        "created": report.created,
        "lines": report.lines,
        "accepted": report.accepted,
        "already_accepted": report.known,
        "line_errors": [
            {"line": e.line, "custom_id": e.custom_id, "code": e.code, "message": e.message}
            for e in report.line_errors
        ],
        "closed": report.closed,
        "status": report.info.status,
    }
    if as_json:
        print_json(summary)
    else:
        print_lines(out, _report_lines(report.batch_id, summary, len(report.line_errors)))
    if report.closed is not None:
        raise CommandError(
            f"batch {report.batch_id} is {report.closed}: it takes no more lines",
            ExitCode.FAILED,
        )
    if report.line_errors:
        sys.exit(ExitCode.PARTIAL)


def _report_lines(batch_id: str, summary: dict[str, object], num_errors: int) -> list[str]:
    verb = "new batch" if summary["created"] else "resumed batch"
    lines = [
        f"{verb} {batch_id}: {summary['lines']} lines; {summary['accepted']} accepted now, "
        f"{summary['already_accepted']} accepted before, {num_errors} line errors"
    ]
    errors = summary["line_errors"]
    assert isinstance(errors, list)
    for error in errors[:_ERRORS_SHOWN]:
        lines.append(f"  line {error['line']}: {error['code']}: {error['message']}")
    if num_errors > _ERRORS_SHOWN:
        lines.append(f"  ... and {num_errors - _ERRORS_SHOWN} more "
                     f"(`vlmq results {batch_id} --errors FILE` lists them all)")
    lines.append(f"follow it: vlmq status {batch_id} --watch")
    return lines


def _has_chat_lines(path: Path) -> bool:
    """Whether any line names the chat endpoint: a byte search, not a parse."""
    from orchestrator.batches.openai_input import CHAT_ENDPOINT

    needle = CHAT_ENDPOINT.encode()
    tail = b""
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle):]
    return False
