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
    assert "6 prompts, 3 distinct images" in done.stdout
    assert "image uses: 9, distinct token ranges: 3" in done.stdout
    # Prompt 5 holds the three images back to back, as three adjacent reserved ranges.
    line = next(row for row in done.stdout.splitlines() if row.startswith("prompt 5 as IDs"))
    assert len(re.findall(r"\[1,000,000,\d{3}\.\.1,000,000,\d{3}\]", line)) == 3


def test_unknown_command_is_refused() -> None:
    done = run_vlmq("frobnicate")
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr
