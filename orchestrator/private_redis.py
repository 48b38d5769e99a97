"""A private redis-server on a free loopback port, started and owned by this process.

For `vlmq demo`, the benchmarks and the tests, where no Redis is configured. Tests also stop,
restart and flush it to prove the queue and the allocator survive that.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRedisServer:
    """`persist_every_write`: append-only with an fsync per write (True), or no persistence;
    `appendfsync="everysec"` keeps the append-only file but syncs it once a second.
    `password`: required of every client (`requirepass`); the URL carries it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        persist_every_write: bool = True,
        appendfsync: str | None = None,
        password: str | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH; scripts/setup installs it")
        self.binary = binary
        self.directory = directory
        self.persist_every_write = persist_every_write
        self.appendfsync = appendfsync or ("always" if persist_every_write else None)
        self.password = password
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5.0
        )

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", self.appendfsync]
            if self.appendfsync
            else ["--appendonly", "no"]
        )
        # The password goes in a file only this user reads: an argument shows in `ps`.
        config = self.directory / "private-redis.conf"
        config.touch(mode=0o600)
        config.write_text(f"requirepass {self.password}\n" if self.password else "")
        self._process = subprocess.Popen(
            [self.binary, str(config), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--maxmemory-policy", "noeviction",
             *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Kill the server without letting it save: whatever it had not persisted is lost."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def shutdown(self) -> None:
        """Stop the server the way an operator does (SHUTDOWN): it flushes what it holds."""
        if self._process is not None:
            with contextlib.suppress(redis.ConnectionError):
                self.client().shutdown(nosave=False)
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()
