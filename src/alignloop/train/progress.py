"""A rich progress bar for training loops: step, loss, tokens/s and ETA."""

from __future__ import annotations

import os
import sys

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
