"""A Ray head of its own, with its dashboard, in a process group of its own.

The session's in-process Ray runs without a dashboard, and Ray's state API needs one: so the
tests that read the state API start this head (`ray start --head --block`) on free loopback
ports and a temporary directory, and end it by its process group, never with `ray stop`
(which would end every Ray of the machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from orchestrator.private_redis import free_port
from tests.support.process_group import end_process_group
from tests.support.waiting import wait_for

# `ray start --block` takes half a minute to end on SIGTERM (its processes shut down one by
# one); a test's head holds nothing worth keeping, so it is killed after this.
STOP_GRACE_S = 3.0

RAY = str(Path(sys.executable).parent / "ray")


class RayHead:
    def __init__(self, temp_dir: Path, num_cpus: int = 4, num_gpus: int = 2) -> None:
        self.temp_dir = temp_dir
        self.port = free_port()
        self.dashboard_port = free_port()
        self.metrics_port = free_port()
        self.log = temp_dir / "ray-head.log"
        self.command = [
            RAY, "start", "--head", "--block",
            f"--port={self.port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--metrics-export-port={self.metrics_port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout_s: float = 180.0) -> RayHead:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            )
        wait_for(lambda: self._answers(self.metrics_url) or self.process.poll() is not None,  # type: ignore[union-attr]
                 "the Ray head's metrics endpoint answers", timeout_s)
        assert self.process.poll() is None, self.log.read_text()
        return self

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process is None:
            return
        end_process_group(self.process, grace_s=STOP_GRACE_S)

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return True
        except OSError:
            return False
