"""Faults an actor can be told to inject, for failure tests and chaos drills; off by default.

A declared seam: the failure tests kill actors for real, and a "poison" request is one that
makes its actor's process exit, as a request that crashes a CUDA kernel would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FaultInjection:
    crash_when_prompt_contains: str | None = None  # the process exits on such a prompt

    def before_request(self, prompt: str) -> None:
        marker = self.crash_when_prompt_contains
        if marker is not None and marker in prompt:
            os._exit(134)
