"""How vlmq reaches its Redis: the URL, the ACL user's password, and TLS files.

One `RedisSettings` travels wherever a Redis connection is made (the client, `vlmq serve`, the
allocator actor), so AUTH and TLS work the same everywhere. Secrets never come from the
command line, where process listings would show them: the password comes from the
environment (`VLMQ_REDIS_PASSWORD`, or inside `VLMQ_REDIS_URL`) or a file, and what is printed
or logged is `masked_url`; `repr()` shows that too.

Connections are made by `sync_client` and `async_client`, not by handing `url` to redis-py
yourself: redis-py lets a password in the URL win over one passed beside it, so these give it
the URL with its password taken out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit

import redis
import redis.asyncio

URL_ENV = "VLMQ_REDIS_URL"
PASSWORD_ENV = "VLMQ_REDIS_PASSWORD"
PASSWORD_FILE_ENV = "VLMQ_REDIS_PASSWORD_FILE"
CA_ENV = "VLMQ_REDIS_CA"
CERT_ENV = "VLMQ_REDIS_CERT"
KEY_ENV = "VLMQ_REDIS_KEY"

# A Redis that accepts the TCP connection but never answers would otherwise hold a client
# forever; callers that want another bound pass their own.
CONNECT_TIMEOUT_S = 5.0
_MASK = "***"
_SCHEMES = ("redis", "rediss", "unix")


class RedisSettingsError(ValueError):
    """The settings cannot make a connection: a password on the command line, a bad URL."""


@dataclass(frozen=True, slots=True, repr=False)
class RedisSettings:
    url: str  # redis://[user[:password]@]host:port/db, or rediss:// for TLS
    password: str | None = field(default=None, repr=False)  # wins over one in the URL
    ca_file: str | None = None  # the CA that signed the server's certificate (rediss://)
    cert_file: str | None = None  # a client certificate, where the server asks for one
    key_file: str | None = None  # its private key

    def __post_init__(self) -> None:
        parts = _split(self.url)
        if parts.scheme not in _SCHEMES:
            raise RedisSettingsError(
                f"a Redis URL starts with redis://, rediss:// or unix://, got {self.masked_url!r}"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise RedisSettingsError("a client certificate needs both its cert and key files")
        tls_files = [f for f in (self.ca_file, self.cert_file) if f is not None]
        if tls_files and parts.scheme != "rediss":
            # Otherwise the files would be ignored and the connection would go in plain text.
            raise RedisSettingsError(
                f"TLS files were given but {self.masked_url!r} is not a TLS URL; "
                "use rediss://"
            )

    @classmethod
    def of(cls, value: str | RedisSettings) -> RedisSettings:
        """Settings from a URL (a test's, the demo's private Redis) or settings as they are."""
        return value if isinstance(value, RedisSettings) else cls(value)

    @classmethod
    def from_environment(
        cls,
        url: str | None = None,
        *,
        password_file: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> RedisSettings:
        """Settings from command-line values, the rest from the environment.

        `url` is the command line's: a password in it is refused (a process listing would
        show it); one in `$VLMQ_REDIS_URL` is taken. The password comes from `password_file`,
        `$VLMQ_REDIS_PASSWORD_FILE` or `$VLMQ_REDIS_PASSWORD`, in that order, and wins over one
        in the URL. TLS files must be readable here: this is where the connection is made.
        """
        env = os.environ if environ is None else environ
        if url is not None and _url_password(_split(url)) is not None:
            raise RedisSettingsError(
                "a password in --redis-url would show in process listings; put the URL in "
                f"${URL_ENV}, or the password in ${PASSWORD_ENV} or --redis-password-file"
            )
        chosen = url or env.get(URL_ENV)
        if not chosen:
            raise RedisSettingsError(f"give --redis-url or set ${URL_ENV}")
        password_path = password_file or env.get(PASSWORD_FILE_ENV)
        password = (
            _read_secret(password_path) if password_path else env.get(PASSWORD_ENV) or None
        )
        files = {
            "CA": ca_file or env.get(CA_ENV) or None,
            "client certificate": cert_file or env.get(CERT_ENV) or None,
            "client key": key_file or env.get(KEY_ENV) or None,
        }
        for what, path in files.items():
            if path is not None and not os.access(path, os.R_OK):
                raise RedisSettingsError(f"cannot read the Redis TLS {what} file {path}")
        return cls(
            chosen,
            password=password,
            ca_file=files["CA"],
            cert_file=files["client certificate"],
            key_file=files["client key"],
        )

    @property
    def masked_url(self) -> str:
        """The URL as logs may show it: a password in it (user info or query) becomes ***."""
        return _replace_password(_split(self.url), _MASK)

    @property
    def is_tls(self) -> bool:
        return _split(self.url).scheme == "rediss"

    def connection_kwargs(self) -> dict[str, Any]:
        """What redis-py's `from_url` takes besides `connection_url`."""
        kwargs: dict[str, Any] = {}
        password = self.password or _url_password(_split(self.url))
        if password is not None:
            kwargs["password"] = password
        if self.ca_file is not None:
            kwargs["ssl_ca_certs"] = self.ca_file
        if self.cert_file is not None:
            kwargs["ssl_certfile"] = self.cert_file
            kwargs["ssl_keyfile"] = self.key_file
        return kwargs

    @property
    def connection_url(self) -> str:
        """The URL without its password, which `connection_kwargs` carries instead."""
        return _replace_password(_split(self.url), None)

    def sync_client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
        return redis.Redis.from_url(self.connection_url, **self.connection_kwargs(), **kwargs)

    def async_client(self, **kwargs: Any) -> redis.asyncio.Redis:
        kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
        return redis.asyncio.Redis.from_url(
            self.connection_url, **self.connection_kwargs(), **kwargs
        )

    def describe_failure(self, error: BaseException) -> str:
        """One line for a person: which Redis, what went wrong, and the likely fix.

        redis-py's own words say what failed, rarely what to change; a missing client
        certificate, for one, shows only as the connection closing.
        """
        said = str(error)
        if self.password:
            said = said.replace(self.password, _MASK)  # redis-py never echoes it; be sure
        hint = self._hint(error, said)
        return f"Redis at {self.masked_url}: {said}" + (f" ({hint})" if hint else "")

    def _hint(self, error: BaseException, said: str) -> str | None:
        if isinstance(error, redis.AuthenticationError):
            return (
                "check the ACL user in the URL and its password: "
                f"${PASSWORD_ENV}, ${PASSWORD_FILE_ENV} or --redis-password-file"
            )
        if "CERTIFICATE_VERIFY_FAILED" in said:
            return (
                "the server's certificate does not verify against the CA given "
                f"(--redis-ca, ${CA_ENV}) for the host in the URL"
            )
        if not isinstance(error, redis.ConnectionError) or isinstance(error, redis.TimeoutError):
            return None
        if self.is_tls and self.cert_file is None:
            return (
                "if the server requires client certificates, give --redis-cert and "
                f"--redis-key (${CERT_ENV}, ${KEY_ENV})"
            )
        if not self.is_tls and ("reset" in said or "closed" in said):
            return "if the server speaks only TLS, use a rediss:// URL"
        return None

    def __repr__(self) -> str:
        files = ", ".join(
            f"{name}={value!r}"
            for name, value in (("ca_file", self.ca_file), ("cert_file", self.cert_file),
                                ("key_file", self.key_file))
            if value is not None
        )
        password = ", password=***" if self.password is not None else ""
        return f"RedisSettings({self.masked_url!r}{password}{', ' if files else ''}{files})"


def _split(url: str) -> SplitResult:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise RedisSettingsError(
            f"the port of the Redis URL is not a number: {_replace_password(parts, _MASK)!r}"
        ) from None
    return parts


def _url_password(parts: SplitResult) -> str | None:
    """The password redis-py would take from the URL: the user info's, else the query's."""
    if parts.password:
        return unquote(parts.password)
    for name, value in _query_items(parts):
        if name == "password" and value:
            return unquote_plus(value)  # as parse_qs, which redis-py uses, decodes it
    return None


def _replace_password(parts: SplitResult, replacement: str | None) -> str:
    """The URL with each password in it replaced, or removed where `replacement` is None."""
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and parts.password is not None:
        user = userinfo.partition(":")[0]
        if replacement is not None:
            netloc = f"{user}:{replacement}@{hostport}"
        else:
            netloc = f"{user}@{hostport}" if user else hostport
    kept = []
    for segment, (name, _) in zip(parts.query.split("&"), _query_items(parts), strict=True):
        if name != "password":
            kept.append(segment)
        elif replacement is not None:
            kept.append(f"password={replacement}")
    query = "&".join(segment for segment in kept if segment)
    # Not urlunsplit: it drops the `//` of unix:///path, which redis-py then refuses.
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def _query_items(parts: SplitResult) -> list[tuple[str, str]]:
    """(name, raw value) of each `&`-separated segment of the query, in order."""
    items = []
    for segment in parts.query.split("&"):
        name, _, value = segment.partition("=")
        items.append((unquote_plus(name), value))
    return items


def _read_secret(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise RedisSettingsError(f"cannot read the Redis password file {path}: {error}") from None
    secret = text.strip("\r\n")
    if not secret:
        raise RedisSettingsError(f"the Redis password file {path} is empty")
    return secret
