"""The `vlmq` command as a person runs it: the installed executable, in a process of its own.

The environment it gets is the test's, without any `VLMQ_*` variable of the machine running
the tests, plus what the test gives; so a test sees exactly the settings it chose.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

VLMQ = str(Path(sys.executable).parent / "vlmq")


def vlmq_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    return {**env, **(extra or {})}


def run_vlmq(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VLMQ, *args], capture_output=True, text=True, timeout=timeout_s, check=False,
        env=vlmq_env(env),
    )
