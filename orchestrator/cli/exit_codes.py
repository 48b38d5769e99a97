"""The exit codes of every `vlmq` command: the one list that docs/CLI.md tables."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the operation itself failed (a job, a batch, a model write)
    USAGE = 2  # click's own code for a bad command line; also bad Redis settings
    NOT_FOUND = 3  # no such job or batch (never submitted, or its results expired)
    REDIS_UNAVAILABLE = 4  # Redis cannot be reached: refused, timed out, AUTH or TLS failed
    PARTIAL = 5  # `submit`: some lines were refused, the others accepted
    INTERRUPTED = 130  # Ctrl-C, as shells report a SIGINT (128 + 2)
