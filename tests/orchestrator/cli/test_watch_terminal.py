"""`vlmq status BATCH --watch` on a real terminal (tmux), read off the screen.

The batch moves only when the test moves it, so each screen below is certain to be shown: no
server at first (nothing done), then a scripted server that finishes the quick jobs and holds
the two `sleep:600` ones running, then those two cancelled, which ends the batch.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.serve import ServerThread
from tests.support.queue_runners import ScriptedRunner
from tests.support.vlmq_cli import VLMQ, vlmq_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Terminal:
    """A 120x30 tmux window on a socket of its own, running one command."""

    def __init__(self) -> None:
        self.socket = f"vlmq-test-{uuid.uuid4().hex[:8]}"
        self.socket_path: Path | None = None

    def tmux(self, *args: str) -> str:
        # The tmux server, and so the shell in its window, gets no VLMQ_* setting but the
        # test's own.
        done = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=30, check=True,
                              env=vlmq_env())
        return done.stdout

    def start(self, command: str) -> None:
        self.tmux("new-session", "-d", "-x", "120", "-y", "30", "-s", "watch", command)
        self.socket_path = Path(self.tmux("display-message", "-p", "#{socket_path}").strip())

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "watch")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=30, check=False)
        if self.socket_path is not None:  # tmux leaves the socket file behind
            self.socket_path.unlink(missing_ok=True)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    terminal = Terminal()
    yield terminal
    terminal.close()


def test_watch_draws_a_bar_and_counts_that_follow_the_batch_and_exits_0_when_done(
    redis_server: PrivateRedisServer, terminal: Terminal
) -> None:
    namespace = f"tty-{uuid.uuid4().hex[:6]}"
    client = Client(redis_server.url, namespace=namespace)
    batch = client.new_batch("pics")
    batch.submit_many([JobSpec(f"quick{i}", "default", "hello") for i in range(4)]
                      + [JobSpec(f"slow{i}", "default", "sleep:600 forever") for i in range(2)])
    command = shlex.join([VLMQ, "status", "pics", "--watch", "--interval", "0.2",
                          "--namespace", namespace])
    # The shell stays after vlmq exits, so its exit code and last screen can be read.
    terminal.start(f"env VLMQ_REDIS_URL={shlex.quote(redis_server.url)} {command}; "
                   "echo vlmq exited $?; sleep 600")

    def shows(*parts: str) -> bool:
        screen = terminal.screen()
        return all(part in screen for part in parts)

    wait_for(lambda: shows("batch pics", "0/6 done", "0%", "queued 6", "running 0"),
             "the batch before any server")
    assert "━" in terminal.screen()  # the bar, empty
    server = ServerThread(
        QueueConfig(redis_server.url, "default", namespace, idle_wait_s=0.2, reap_every_s=0.2),
        ScriptedRunner(capacity=8),
    )
    server.start()
    try:
        wait_for(lambda: shows("4/6 done", "67%", "queued 0", "running 2", "succeeded 4"),
                 "the quick jobs done, the slow ones running")
        assert "jobs/s" in terminal.screen() and "ETA" in terminal.screen()
        assert "vlmq exited" not in terminal.screen()  # still watching
        for job_id in ("slow0", "slow1"):
            client.cancel(job_id)
        wait_for(lambda: shows("6/6 done", "100%", "cancelled 2", "vlmq exited 0"),
                 "the batch done and the watch ended")
    finally:
        server.stop()
        client.close()
    lines = terminal.screen().splitlines()
    assert ("batch pics: 6 jobs, 0 unfinished; 0 queued, 0 running, 4 succeeded, 0 failed, "
            "2 cancelled, 0 dead") in lines
