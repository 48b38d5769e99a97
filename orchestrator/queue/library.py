"""The queue's Redis Functions library: loaded, and its version checked, before first use.

`functions.lua` is loaded as library `vlmq`. Its version is `LIBRARY_VERSION` and a digest of
its code, so a server never runs against a library that is not the one it was written for:
a missing library is loaded, an older one replaced, and a newer one (or the same version with
other code) refused, since replacing it would break the servers that loaded it.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

import redis
import redis.asyncio

LIBRARY_NAME = "vlmq"
LIBRARY_VERSION = 1
# The oldest server vlmq is tested on (Debian's); newer commands are used behind checks only.
MIN_REDIS_VERSION = (7, 0, 0)


class LibraryMismatchError(RuntimeError):
    """Redis holds a vlmq library this vlmq did not write; it is left as it is."""


class RedisTooOldError(RuntimeError):
    """The Redis server predates Redis Functions (7.0)."""


@cache
def library_code() -> str:
    template = resources.files("orchestrator.queue").joinpath("functions.lua").read_text()
    digest = hashlib.sha256(template.encode()).hexdigest()[:16]
    return template.replace("__VERSION__", f"{LIBRARY_VERSION}:{digest}")


def expected_version() -> str:
    return library_code().split("LIBRARY_VERSION = '", 1)[1].split("'", 1)[0]


def ensure_library(client: redis.Redis) -> None:
    """Load the library unless this exact version is there; refuse one that is newer."""
    _check_server(str(client.info("server")["redis_version"]))
    try:
        found = client.fcall_ro("vlmq_version", 0)
    except redis.ResponseError as error:
        if "function not found" not in str(error).lower():
            raise
        found = None
    action = _decide(found)
    if action == "load":
        client.function_load(library_code(), replace=found is not None)


async def ensure_library_async(client: redis.asyncio.Redis) -> None:
    _check_server(str((await client.info("server"))["redis_version"]))
    try:
        found = await client.fcall_ro("vlmq_version", 0)
    except redis.ResponseError as error:
        if "function not found" not in str(error).lower():
            raise
        found = None
    if _decide(found) == "load":
        await client.function_load(library_code(), replace=found is not None)


def _decide(found: object) -> str:
    ours = expected_version()
    if found is None:
        return "load"
    text = found.decode() if isinstance(found, bytes) else str(found)
    if text == ours:
        return "keep"
    number = text.split(":", 1)[0]
    if number.isdigit() and int(number) < LIBRARY_VERSION:
        return "load"
    raise LibraryMismatchError(
        f"Redis holds vlmq library version {text}; this vlmq has {ours}. Upgrade every "
        f"vlmq server and client of this Redis to one release (an older library is replaced; "
        f"a newer one, or other code of the same version, is left alone)."
    )


def _check_server(version: str) -> None:
    parts = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    if parts < MIN_REDIS_VERSION:
        raise RedisTooOldError(
            f"Redis {version} has no Redis Functions; vlmq needs Redis 7.0 or newer"
        )
