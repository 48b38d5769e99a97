"""The `vlmq` command: a click group whose commands live in small modules, loaded on use.

Each command module imports nothing heavy at its top: `serve`, `demo` and `make-tiny-model`
import torch, Ray or transformers inside their function, so the commands that only talk to
Redis (`status`) start in a fraction of a second. `COMMANDS` names every command, in the order
`vlmq --help` lists them. Every command's Redis failures, missing jobs and Ctrl-C end here as
one line and a documented exit code (`exit_codes.ExitCode`; docs/CLI.md).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from orchestrator.cli.command_error import CommandError
from orchestrator.cli.exit_codes import ExitCode
from orchestrator.cli.options import SETTINGS_META_KEY
from orchestrator.cli.redis_failure import redis_failure
from orchestrator.queue.errors import NoSuchJobError
from orchestrator.redis_connection import RedisSettings

# name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "serve": "orchestrator.cli.serve_command:serve",
    "submit": "orchestrator.cli.submit_command:submit",
    "status": "orchestrator.cli.status_command:status",
    "results": "orchestrator.cli.results_command:results",
    "cancel": "orchestrator.cli.cancel_command:cancel",
    "demo": "orchestrator.cli.demo_command:demo",
    "make-tiny-model": "orchestrator.cli.tiny_model_command:make_tiny_model",
}


class VlmqGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            ctx.exit(ExitCode.INTERRUPTED)  # quietly: the person pressed Ctrl-C and knows it
        except Exception as error:
            known = _as_command_error(error, ctx.meta.get(SETTINGS_META_KEY))
            if known is None:
                raise
            click.echo(f"Error: {known}", err=True)
            ctx.exit(known.code)


def _as_command_error(error: Exception, settings: RedisSettings | None) -> CommandError | None:
    if isinstance(error, CommandError):
        return error
    if isinstance(error, NoSuchJobError):
        return CommandError(str(error), ExitCode.NOT_FOUND)
    return redis_failure(error, settings)


@click.group(
    cls=VlmqGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="vlmq", message="%(prog)s %(version)s")
def main() -> None:
    """vlmq: batches of vision-language jobs through a Redis queue to Ray GPU actors.

    Start a server for a model with `vlmq serve`, follow a queue or a batch with
    `vlmq status`; `vlmq demo` runs a sample batch on this machine with nothing to set up.
    `vlmq COMMAND --help` explains each command; docs/CLI.md has examples and exit codes.
    """
