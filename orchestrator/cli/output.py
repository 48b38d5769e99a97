"""Where commands print: rich for people, plain `json.dumps` for scripts.

Human output goes through one rich `Console` on stdout; it never wraps a long line (a pipe
gets each line whole) and prints no markup from data (a job ID with brackets stays as it is).
`--json` output is one JSON object per line on stdout, with stable keys and no markup.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console, RenderableType
from rich.text import Text


def console() -> Console:
    return Console(soft_wrap=True, highlight=False)


def print_json(value: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def print_lines(out: Console, lines: Iterable[str | RenderableType]) -> None:
    for line in lines:
        out.print(Text(line) if isinstance(line, str) else line)
