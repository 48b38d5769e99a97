"""Options several commands share: where Redis is (and its secrets), the namespace, the queue.

Secrets never come from the command line, where `ps` would show them: `--redis-url` refuses a
password; the password comes from `$VLMQ_REDIS_PASSWORD`, `--redis-password-file` or a URL in
`$VLMQ_REDIS_URL`. `RedisSettings.from_environment` makes that one decision for every command.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from orchestrator.redis_connection import (
    CA_ENV,
    CERT_ENV,
    KEY_ENV,
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    URL_ENV,
    RedisSettings,
    RedisSettingsError,
)
from orchestrator.redis_keys import check_name

F = TypeVar("F", bound=Callable[..., Any])

# Where the settings a command resolved are kept, so a Redis failure can name the (masked) URL.
SETTINGS_META_KEY = "vlmq.redis_settings"

_FILE = click.Path(dir_okay=False)
_REDIS_OPTIONS = (
    click.option(
        "--redis-url", metavar="URL",
        help=f"the Redis: redis://[user@]host:port/db, or rediss:// for TLS. No password "
             f"here (use ${PASSWORD_ENV}); default ${URL_ENV}, which may hold one",
    ),
    click.option(
        "--redis-password-file", type=_FILE, metavar="FILE",
        help=f"read the Redis password from FILE (default ${PASSWORD_FILE_ENV}, "
             f"else ${PASSWORD_ENV})",
    ),
    click.option("--redis-ca", type=_FILE, metavar="FILE",
                 help=f"the CA that signed the server's TLS certificate (default ${CA_ENV})"),
    click.option("--redis-cert", type=_FILE, metavar="FILE",
                 help=f"a client certificate, for servers that ask for one (default ${CERT_ENV})"),
    click.option("--redis-key", type=_FILE, metavar="FILE",
                 help=f"the client certificate's private key (default ${KEY_ENV})"),
)


def redis_options(command: F) -> F:
    """Add the Redis options; the command gets one `redis_settings: RedisSettings` instead."""

    @functools.wraps(command)
    def with_settings(
        *args: Any,
        redis_url: str | None,
        redis_password_file: str | None,
        redis_ca: str | None,
        redis_cert: str | None,
        redis_key: str | None,
        **kwargs: Any,
    ) -> Any:
        settings = resolve_redis_settings(
            redis_url, password_file=redis_password_file, ca_file=redis_ca,
            cert_file=redis_cert, key_file=redis_key,
        )
        return command(*args, redis_settings=settings, **kwargs)

    decorated: Callable[..., Any] = with_settings
    for option in reversed(_REDIS_OPTIONS):  # click lists options in decoration order
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]  # click calls it with the options' values


def resolve_redis_settings(
    url: str | None,
    *,
    password_file: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> RedisSettings:
    """The settings from the command line and the environment; a bad one is a usage error."""
    try:
        settings = RedisSettings.from_environment(
            url, password_file=password_file, ca_file=ca_file, cert_file=cert_file,
            key_file=key_file,
        )
    except RedisSettingsError as error:
        raise click.UsageError(str(error)) from None
    for what, path in (("CA", settings.ca_file), ("certificate", settings.cert_file),
                       ("key", settings.key_file)):
        # Checked here, where it is a usage error, rather than deep in a TLS handshake.
        if path is not None and not Path(path).is_file():
            raise click.UsageError(f"the Redis TLS {what} file {path} does not exist")
    click.get_current_context().meta[SETTINGS_META_KEY] = settings
    return settings


def _checked_name(kind: str) -> Callable[[click.Context, click.Parameter, str], str]:
    def check(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        try:
            return check_name(kind, value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None

    return check


namespace_option = click.option(
    "--namespace", default="vlmq", show_default=True, metavar="NAME",
    callback=_checked_name("namespace"),
    help="the deployment's namespace: the prefix of every Redis key it writes",
)
queue_option = click.option(
    "--queue", default="default", show_default=True, metavar="NAME",
    callback=_checked_name("queue"),
    help="the queue's name",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="print JSON for scripts (one object) instead of text",
)
