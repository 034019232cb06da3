"""Commands of stage 1: built-in data, config, pretraining, SFT, and generation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignloop.cli.common import (
    App,
    ConfigOption,
    ForceOption,
    OverridesArgument,
    RunOption,
    echo,
    out,
    reporting_errors,
    run_stage,
)
from alignloop.cli.stage_help import stage_epilog
from alignloop.runs import RunDir

data_app = App(help="Built-in data sets.", no_args_is_help=True)
config_app = App(help="Stage configurations.", no_args_is_help=True)


@data_app.command("stories")
def data_stories(
    out_path: Annotated[Path, typer.Option("--out", help="Corpus file to write; prompts and SFT pairs go beside it.")],
    n: Annotated[int, typer.Option("--n", help="Number of stories.")] = 20000,
    seed: Annotated[int, typer.Option("--seed", help="Generator seed (same seed, same files).")] = 0,
) -> None:
    """Write the built-in children's-story corpus, a prompt set of openings and SFT pairs."""
    with reporting_errors():
        from alignloop.data.stories import write_builtin_data

        for kind, path in write_builtin_data(out_path, n, seed).items():
            echo(f"{kind}: {path}")


@config_app.command("show", epilog="Examples: alignloop config show ppo;  alignloop config show reward eval")
def config_show(stage: Annotated[list[str], typer.Argument(
        metavar="STAGE", help="Stage: pretrain, sft, sample, annotate, reward, reward eval (or reward-eval), ppo, "
                              "grpo, dpo, bon, eval, loop.")]) -> None:
    """Print a stage's default configuration as YAML (every key can be overridden as key=value)."""
    with reporting_errors():
        from alignloop.config.base import to_commented_yaml
        from alignloop.config.registry import config_class

        out(to_commented_yaml(config_class(stage)()))


def pretrain(run: RunOption, config: ConfigOption = None, overrides: OverridesArgument = None,
             force: ForceOption = False) -> None:
    """Pretrain a causal LM on a corpus (default: the built-in stories); rerun to resume."""
    run_stage("pretrain", "alignloop.pretrain.stage:run_pretrain", run, config, overrides, force)


def sft(run: RunOption, config: ConfigOption = None, overrides: OverridesArgument = None,
        force: ForceOption = False) -> None:
    """Supervised fine-tuning on prompt/response pairs, loss on responses only; rerun to resume."""
    run_stage("sft", "alignloop.sft.stage:run_sft", run, config, overrides, force)


def latest_policy(run: RunDir) -> Path:
    """The newest model of a run: the last round's policy, else SFT, else pretraining."""
    rounds = sorted((run.root / "rounds").glob("[0-9][0-9][0-9]/policy/final")) if (run.root / "rounds").exists() else []
    for candidate in [*reversed(rounds), run.final("sft"), run.final("pretrain")]:
        if candidate.exists():
            return candidate
    from alignloop.errors import CheckpointError

    raise CheckpointError(f"no checkpoint in {run.root}; run `alignloop pretrain --run {run.root}` first or pass --checkpoint")


def generate(
    run: Annotated[Optional[Path], typer.Option("--run", help="Run directory; its newest model is used.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="A local HF causal-LM checkpoint.")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", help="Prompt text; repeat for a batch.")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="JSONL (prompt field) or text file.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 96,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.8,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch.")] = 32,
) -> None:
    """Complete prompts with a checkpoint; prints one completion per line (prompt + continuation)."""
    with reporting_errors():
        from alignloop.errors import AlignloopError
        from alignloop.generation.text import complete
        from alignloop.models.causal_lm import load_causal_lm
        from alignloop.stages import read_prompts
        from alignloop.tokenizer import load_tokenizer
        from alignloop.train.device import pick_device

        if checkpoint is None and run is None:
            raise AlignloopError("give --run DIR or --checkpoint PATH")
        if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
            raise AlignloopError("need temperature >= 0, 0 < top_p <= 1 and max_new_tokens >= 1")
        path = checkpoint or latest_policy(RunDir(run))
        prompts = list(prompt or []) + (read_prompts(prompts_file) if prompts_file else [])
        prompts = prompts or [""]
        model = load_causal_lm(path).to(pick_device()).eval()
        tokenizer = load_tokenizer(path)
        greedy = temperature == 0
        texts = complete(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                         temperature=1.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                         top_k=1 if greedy else 0, seed=seed, batch_size=batch_size)
        for p, text in zip(prompts, texts):
            out((p + " " + text).strip().replace("\n", " "))


def register(app: typer.Typer) -> None:
    """Add the stage-1 commands to the main app."""
    app.add_typer(data_app, name="data")
    app.add_typer(config_app, name="config")
    app.command("pretrain", epilog=stage_epilog("pretrain"))(pretrain)
    app.command("sft", epilog=stage_epilog("sft"))(sft)
    app.command("generate")(generate)
