"""A `vlmq serve` (or scripted serve) child process that tests can signal, kill and restart."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent.parent


class ServeProcess:
    def __init__(self, module: str, *args: str, log: Path) -> None:
        self.command = [sys.executable, "-m", module, *args]
        self.log = log
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 120.0) -> ServeProcess:
        self.lines = []
        self.process = subprocess.Popen(
            self.command, cwd=REPO, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
            # A group of its own: a kill -9 takes the local Ray it started along, as the loss
            # of its machine would.
            start_new_session=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        wait_for(lambda: self.serving or self.process is None or self.process.poll() is not None,
                 f"{self.command[2]} serving", timeout_s)
        assert self.serving, f"it did not start:\n{self.output}"
        return self

    @property
    def serving(self) -> bool:
        return any("serving queue" in line for line in self.lines)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """kill -9 of it and everything it started: nothing is drained, handed back or
        flushed."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout_s: float = 120.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout_s)
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGCONT)  # one that was stopped must run to drain
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with self.log.open("a") as log:
            for line in process.stdout:
                self.lines.append(line)
                log.write(line)
