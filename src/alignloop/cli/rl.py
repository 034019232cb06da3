"""Commands of stage 4: RL fine-tuning (`ppo`, `grpo`, `dpo`, `bon`) and its evaluation (`eval`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from alignloop.cli.common import (
    ConfigOption,
    ForceOption,
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


def ppo(run: RunOption, config: ConfigOption = None, overrides: OverridesArgument = None,
        force: ForceOption = False) -> None:
    """PPO against the round's reward model with a KL penalty to the reference; rerun to resume."""
    run_stage("ppo", "alignloop.rl.ppo:run_ppo", run, config, overrides, force)


def grpo(run: RunOption, config: ConfigOption = None, overrides: OverridesArgument = None,
         force: ForceOption = False) -> None:
    """GRPO (or RLOO with grpo.estimator=rloo): critic-free, group-relative baselines; rerun to resume."""
    run_stage("grpo", "alignloop.rl.grpo:run_grpo", run, config, overrides, force)


def dpo(run: RunOption, config: ConfigOption = None, overrides: OverridesArgument = None,
        force: ForceOption = False) -> None:
    """DPO, offline, on the preference pairs of the feedback store (or a JSONL file); rerun to resume."""
    run_stage("dpo", "alignloop.rl.dpo:run_dpo", run, config, overrides, force)


def bon(run: RunOption, config: ConfigOption = None, overrides: OverridesArgument = None,
        force: ForceOption = False) -> None:
    """Best-of-n with the reward model on the evaluation prompts, judged against the starting policy."""
    out(json.dumps(run_stage("bon", "alignloop.rl.bon:run_bon", run, config, overrides, force)))


def evaluate(
    run: RunOption,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Policy to evaluate (default: the "
                                                       "newest rounds/NNN/policy/final).")] = None,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="Write the results to this file (and its samples beside it) instead of the run's record "
                       "of the policy (rounds/NNN/eval.json), which stays as it is.")] = None,
    config: ConfigOption = None,
    overrides: OverridesArgument = None,
    force: ForceOption = False,
) -> None:
    """Win rate against SFT (gold judge and reward model), KL to the reference, perplexity before/after."""
    with reporting_errors(), writing_run(run) as run_dir:
        from alignloop.evaluation.config import EvalConfig
        from alignloop.evaluation.stage import run_eval

        result = run_eval(run_dir, resolve(EvalConfig, config, overrides), checkpoint, json_out, log=echo,
                          force=force)
        out(json.dumps(result))


def register(app: typer.Typer) -> None:
    """Add the stage-4 commands to the main app."""
    for name, command in (("ppo", ppo), ("grpo", grpo), ("dpo", dpo), ("bon", bon), ("eval", evaluate)):
        app.command(name, epilog=stage_epilog(name))(command)
