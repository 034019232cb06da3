"""`alignloop sample`: responses from a checkpoint into the feedback store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignloop.cli.common import (
    ConfigOption,
    ForceOption,
    OverridesArgument,
    RunOption,
    echo,
    reporting_errors,
    resolve,
    writing_run,
)
from alignloop.cli.stage_help import stage_epilog


def sample(
    run: RunOption,
    config: ConfigOption = None,
    overrides: OverridesArgument = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Model to sample from (default: the run's newest).")] = None,
    db: Annotated[Optional[str], typer.Option("--db", help="Feedback store: SQLite path or postgresql+psycopg:// URL (default: RUN/feedback.db).")] = None,
    select: Annotated[Optional[str], typer.Option(
        "--select", metavar="MODE", help="Which pairs people judge (select.mode): random (pairs_per_prompt random "
                                         "pairs of each prompt), uncertain (those the newest earlier round's reward "
                                         "ensemble disagrees on most, keeping select.random_fraction at random) or "
                                         "diverse (the most different comparisons). Writes rounds/NNN/selection.jsonl.")
    ] = None,
    force: ForceOption = False,
) -> None:
    """Sample K responses per prompt and load them as annotation items in the feedback store."""
    with reporting_errors(), writing_run(run) as run_dir:
        from alignloop.cli.lm import latest_policy
        from alignloop.sample.config import SampleConfig
        from alignloop.sample.stage import run_sample

        cfg = resolve(SampleConfig, config, [*(overrides or []), *([f"select.mode={select}"] if select else [])])
        run_sample(run_dir, cfg, checkpoint or latest_policy(run_dir), db, log=echo, force=force)


def register(app: typer.Typer) -> None:
    app.command("sample", epilog=stage_epilog("sample"))(sample)
