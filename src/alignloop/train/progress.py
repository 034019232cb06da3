"""Progress of a training loop: a rich bar on a terminal, log lines with an ETA elsewhere (CI, nohup)."""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def training_progress(description: str) -> Progress:
    """A progress bar on stderr; plain (no live redraw) when stderr is not a terminal."""
    console = Console(stderr=True, force_terminal=None)
    # Under a launcher only rank 0 draws (RANK is set by torchrun and accelerate launch).
    quiet = os.environ.get("ALIGNLOOP_QUIET") == "1" or os.environ.get("RANK", "0") != "0"
    return Progress(
        TextColumn(f"[bold]{description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not sys.stderr.isatty(),
        transient=False,
    )


def clock(seconds: float) -> str:
    """`4:05` or `1:02:03` (hours only when there are some)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_text(elapsed: float, steps_run: int, steps_left: int) -> str:
    """`eta 4:05` from the mean time of the steps run so far; `eta ?` before the first one."""
    if steps_run <= 0:
        return "eta ?"
    return f"eta {clock(elapsed / steps_run * max(steps_left, 0))}"


class StepTimer:
    """The ETA of a loop of `total` steps started (or resumed) at `start`, and when to print a log line.

    Only the steps run in this process count towards the rate: a resumed run's earlier
    steps took no time here.
    """

    def __init__(self, total: int, start: int = 0, every_seconds: float = 60.0):
        self.total, self.start, self.every_seconds = total, start, every_seconds
        self.started = self.last_line = time.monotonic()

    def eta(self, done: int) -> str:
        return eta_text(time.monotonic() - self.started, done - self.start, self.total - done)

    def line_due(self, done: int, every_steps: int) -> bool:
        """Whether a log without a terminal should get a line now: every `every_steps` steps, at the
        end, and at least every `every_seconds` so that a slow run shows it is alive."""
        now = time.monotonic()
        due = done == self.total or done % every_steps == 0 or now - self.last_line >= self.every_seconds
        if due:
            self.last_line = now
        return due
