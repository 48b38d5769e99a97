"""`CommandError`: a command's error and its exit code; `vlmq` prints it as one line."""

from __future__ import annotations

from orchestrator.cli.exit_codes import ExitCode


class CommandError(Exception):
    """Raised by a command; `vlmq` prints `Error: <message>` on stderr (no traceback) and
    exits with `code`."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.code = code
