"""Entry point of the `alignloop` command.

Each group of commands lives in its own module with a `register(app)` function;
this file only assembles them.
"""

from __future__ import annotations

import importlib
import os

import typer

# Runs never reach the network: models, tokenizers and data come from local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting make small matmuls 10-40x slower on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Our own progress bars and messages speak for the stages; the libraries' would repeat them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

app = typer.Typer(
    name="alignloop",
    help="The whole RLHF loop: pretrain, collect feedback, train a reward model, PPO, iterate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Modules that add commands, in the order they appear in --help.
COMMAND_MODULES = (
    "alignloop.cli.lm",
    "alignloop.cli.sample",
    "alignloop.cli.feedback",
    "alignloop.cli.reward",
    "alignloop.cli.rl",
    "alignloop.cli.loop",
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
