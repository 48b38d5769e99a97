"""`vlmq status BATCH --watch`: follow a batch until no job of it is unfinished.

On a terminal, a live rich display: a bar of jobs finished out of the total, the counts per
state, the rate over the last seconds and the time left at that rate. Anywhere else (a pipe, a
log file) one plain line per interval, or one JSON object per line with `--json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.cli.batch_view import BatchView
from orchestrator.cli.output import print_json
from orchestrator.cli.rate_window import RateWindow

BAR_WIDTH = 40


def watch_batch(
    read: Callable[[], BatchView], out: Console, *, interval_s: float, as_json: bool
) -> BatchView:
    """Show the batch every `interval_s` until it is done; its last view."""
    window = RateWindow()
    if as_json or not out.is_terminal:
        while True:
            view = _sample(read, window)
            if as_json:
                print_json(_json_line(view, window))
            else:
                out.print(Text(f"{view.summary()}; {_speed(view, window)}"))
            if view.done:
                return view
            time.sleep(interval_s)
    with Live(console=out, auto_refresh=False, transient=False) as live:
        while True:
            view = _sample(read, window)
            live.update(_display(view, window), refresh=True)
            if view.done:
                break
            time.sleep(interval_s)
    out.print(Text(view.summary()))
    return view


def _sample(read: Callable[[], BatchView], window: RateWindow) -> BatchView:
    view = read()
    window.add(time.monotonic(), view.finished)
    return view


def _display(view: BatchView, window: RateWindow) -> RenderableType:
    total = view.counts.total
    percent = 100 * view.finished / total if total else 100.0
    head = Table.grid(padding=(0, 1))
    head.add_row(
        Text(f"batch {view.batch_id}", style="bold"),
        ProgressBar(total=max(total, 1), completed=view.finished if total else 1,
                    width=BAR_WIDTH),
        Text(f"{view.finished}/{total} done", style="bold"),
        Text(f"{percent:.0f}%"),
    )
    states = Text("  ").join(
        Text(f"{state} {n}", style=_STYLES.get(state, "")) for state, n in view.per_state().items()
    )
    return Group(head, states, Text(_speed(view, window)))


_STYLES = {"running": "cyan", "succeeded": "green", "failed": "red", "dead": "red",
           "cancelled": "yellow"}


def _speed(view: BatchView, window: RateWindow) -> str:
    rate = window.rate
    eta = window.eta_s(view.counts.open)
    rate_text = f"{rate:.1f} jobs/s" if rate is not None else "-- jobs/s"
    eta_text = str(timedelta(seconds=round(eta))) if eta is not None else "--"
    return f"{rate_text}, ETA {eta_text}"


def _json_line(view: BatchView, window: RateWindow) -> dict[str, Any]:
    rate = window.rate
    eta = window.eta_s(view.counts.open)
    return {
        **view.as_json(),
        "rate_per_s": round(rate, 3) if rate is not None else None,
        "eta_s": round(eta, 1) if eta is not None else None,
    }
