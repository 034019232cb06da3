"""`alignloop sample`: responses from a checkpoint into the feedback store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignloop.cli.common import ConfigOption, OverridesArgument, RunOption, echo, reporting_errors, resolve
from alignloop.cli.stage_help import stage_epilog
from alignloop.runs import RunDir


def sample(
    run: RunOption,
    config: ConfigOption = None,
    overrides: OverridesArgument = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Model to sample from (default: the run's newest).")] = None,
    db: Annotated[Optional[str], typer.Option("--db", help="Feedback store: SQLite path or postgresql+psycopg:// URL (default: RUN/feedback.db).")] = None,
) -> None:
    """Sample K responses per prompt and load them as annotation items in the feedback store."""
    with reporting_errors():
        from alignloop.cli.lm import latest_policy
        from alignloop.sample.config import SampleConfig
        from alignloop.sample.stage import run_sample

        run_dir = RunDir(run).ensure()
        cfg = resolve(SampleConfig, config, overrides)
        run_sample(run_dir, cfg, checkpoint or latest_policy(run_dir), db, log=echo)


def register(app: typer.Typer) -> None:
    app.command("sample", epilog=stage_epilog("sample"))(sample)
