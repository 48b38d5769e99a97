"""Redis failures as one clear line: what could not be reached, and why (no traceback)."""

from __future__ import annotations

import ssl

import redis
from redis.exceptions import NoPermissionError

from orchestrator.cli.command_error import CommandError
from orchestrator.cli.exit_codes import ExitCode
from orchestrator.redis_connection import RedisSettings


def redis_failure(
    error: BaseException, settings: RedisSettings | None
) -> CommandError | None:
    """The `CommandError` for an error meaning Redis is unusable from here; None for others."""
    where = f"Redis at {settings.masked_url}" if settings is not None else "Redis"
    # redis-py raises AuthenticationError for NOAUTH and WRONGPASS, a subclass of
    # ConnectionError; TLS handshake failures arrive as ConnectionError or bare SSLError.
    if isinstance(error, redis.AuthenticationError):
        reason = f"{where} refused the credentials: {error}"
    elif isinstance(error, NoPermissionError):
        reason = f"{where}: the ACL user may not do this: {error}"
    elif isinstance(error, redis.ConnectionError | redis.TimeoutError | ssl.SSLError):
        reason = f"cannot reach {where}: {error}"
    else:
        return None
    return CommandError(_one_line(reason), ExitCode.REDIS_UNAVAILABLE)


def _one_line(text: str) -> str:
    return " ".join(text.split())
