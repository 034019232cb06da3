"""`alignloop demo` (and, as the later stages land, `loop` and `report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alignloop.cli.common import echo, reporting_errors
from alignloop.runs import RunDir


def demo(
    run: Annotated[Path, typer.Option("--run", help="Run directory for the demo.")] = Path("runs/demo"),
    fast: Annotated[bool, typer.Option("--fast", help="A seconds-long smoke version (tiny model, few steps).")] = False,
) -> None:
    """The whole pipeline on the built-in story task on a laptop CPU; rerun to resume."""
    with reporting_errors():
        from alignloop.loop.demo import run_demo

        run_demo(RunDir(run).ensure(), log=echo, fast=fast)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
