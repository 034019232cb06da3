"""Stage 5 commands: `loop` (rounds of feedback and RL), `demo`, and `report`."""

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


def loop(
    run: RunOption,
    config: ConfigOption = None,
    overrides: OverridesArgument = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="Rounds to run in all (default: config's rounds).")] = None,
    human: Annotated[bool, typer.Option("--human", help="Serve the web app and wait for people's judgments instead of simulated annotators.")] = False,
    force: ForceOption = False,
) -> None:
    """Round after round: sample from the policy, collect feedback, retrain the reward model, RL, evaluate.

    The RL step is `algorithm=`: ppo (default), grpo, rloo, dpo (online DPO on
    the round's own judgments) or bon (best-of-n distillation: fine-tune on the
    reward model's best of n samples), or a list with one per round,
    `algorithm=\\[bon,bon,ppo]`, the last repeating. Needs a run with an SFT
    (or pretrained) model. Rerun the same command after an interruption:
    finished steps are skipped, no judgment is lost. Ends with a table of the
    rounds and the report's path.
    """
    with reporting_errors(), writing_run(run) as run_dir:
        import time

        from alignloop.loop.config import LoopConfig
        from alignloop.loop.rounds import run_loop
        from alignloop.loop.summary import print_summary

        started = time.monotonic()
        extra = [f"rounds={rounds}"] if rounds is not None else []
        cfg = resolve(LoopConfig, config, list(overrides or []) + extra)
        results = run_loop(run_dir, cfg, human=human, log=echo, force=force)
        print_summary(results, f"alignloop loop ({(time.monotonic() - started) / 60:.1f} min)",
                      run_dir.report if cfg.report else None)


def demo(
    run: Annotated[Path, typer.Option("--run", help="Run directory for the demo.")] = Path("runs/demo"),
    fast: Annotated[bool, typer.Option("--fast", help="A smoke version in about a minute (tiny model, few steps).")] = False,
    force: ForceOption = False,
) -> None:
    """The whole pipeline on the built-in story task on a laptop CPU; rerun to resume.

    A run made with other demo settings (an older alignloop's) stops at the
    first step whose settings changed; `--force` redoes that step and what
    depends on it, keeping everything before it.
    """
    with reporting_errors(), writing_run(run) as run_dir:
        from alignloop.loop.demo import run_demo

        run_demo(run_dir, log=echo, fast=fast, force=force)


def report(run: RunOption) -> None:
    """Write RUN/report.html: configuration, curves, win rate per round, agreement, samples."""
    with reporting_errors():
        from alignloop.errors import AlignloopError
        from alignloop.loop.report import write_report

        if not Path(run).is_dir():
            raise AlignloopError(f"run directory {run} does not exist")
        with writing_run(run) as run_dir:
            echo(f"report: {write_report(run_dir)}")


def register(app: typer.Typer) -> None:
    app.command("loop", epilog=stage_epilog("loop"))(loop)
    app.command("demo")(demo)
    app.command("report")(report)
