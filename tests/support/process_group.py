"""Ending a helper process started in a session of its own, with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def end_process_group(process: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    """SIGTERM to the process's group, SIGKILL if it has not ended within `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
