"""Stage 3 commands: `alignloop reward` (train; the default) and `alignloop reward eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from alignloop.cli.common import (
    App,
    ConfigOption,
    ForceOption,
    Group,
    OverridesArgument,
    RunOption,
    echo,
    out,
    reporting_errors,
    resolve,
    run_stage,
    writing_run,
)
from alignloop.cli.stage_help import stage_epilog


class TrainByDefault(Group):
    """`alignloop reward --run DIR ...` means `alignloop reward train --run DIR ...`."""

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


reward_app = App(cls=TrainByDefault, no_args_is_help=True, epilog=stage_epilog("reward"),
                 help="Train the reward model on the feedback (default) or evaluate it (`reward eval`).")

JsonOption = Annotated[Optional[Path], typer.Option(
    "--json", help="Write the figures to this JSON file instead of the round's record (rounds/NNN/reward/eval.json), "
                   "which stays as it is.")]
DbOption = Annotated[Optional[str], typer.Option(
    "--db", help="Feedback store instead of RUN/feedback.db: a SQLite path or postgresql+psycopg:// URL.")]


@reward_app.command("train", epilog=stage_epilog("reward"))
def train(run: RunOption, config: ConfigOption = None, overrides: OverridesArgument = None,
          db: DbOption = None, force: ForceOption = False) -> None:
    """Train a reward model on the run's feedback store or data.path=FILE (TRL/HH/rich JSONL); rerun to resume."""
    run_stage("reward", "alignloop.reward.stage:run_reward", run, config, overrides, force, db=db)


@reward_app.command("eval", epilog=stage_epilog("reward-eval"))
def evaluate(run: RunOption, config: ConfigOption = None, overrides: OverridesArgument = None,
             json_out: JsonOption = None,
             db: DbOption = None, force: ForceOption = False) -> None:
    """Accuracy, loss, calibration (ECE) and accuracy by margin; agreement with the gold judge on the built-in task."""
    with reporting_errors(), writing_run(run) as run_dir:
        from alignloop import atomic
        from alignloop.config.base import parse_overrides
        from alignloop.reward.config import RewardEvalConfig
        from alignloop.reward.stage import run_reward_eval

        cfg = resolve(RewardEvalConfig, config, overrides)
        explicit = set((parse_overrides(overrides).get("data") or {}).keys())
        result = run_reward_eval(run_dir, cfg, log=echo, db=db, explicit=explicit, keep_record=json_out is None,
                                 force=force)
        if json_out is not None:
            atomic.write_json(json_out, result)
            echo(f"figures written to {json_out}")
        else:
            out(json.dumps(result, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(reward_app, name="reward")
