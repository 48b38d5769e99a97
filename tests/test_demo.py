"""`vlmq demo`, the README's main job, run as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys


def run_vlmq(*args: str) -> subprocess.CompletedProcess[str]:
    # A process of its own: the demo starts and stops its own Ray and redis-server.
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_demo_runs_end_to_end() -> None:
    done = run_vlmq("demo")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "vlmq demo: 21 requests" in out
    # The corrupt image fails its three requests alone; the other 18 generate to their limit.
    assert "outcomes: failed 3, length 18" in out
    assert out.count("CorruptImageError") == 3
    assert "vision tower runs: 3 for 3 distinct good images" in out
    assert re.search(r"throughput: 432 new tokens in [\d.]+s", out)


def test_unknown_command_is_refused() -> None:
    done = run_vlmq("frobnicate")
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr
