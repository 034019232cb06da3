"""Entry point of the `alignloop` command.

Each group of commands lives in its own module with a `register(app)` function;
this file only assembles them.
"""

from __future__ import annotations

import importlib
import os

import typer

from alignloop.cli.common import App

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

app = App(
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


# The commands that train, and so split their work over the processes that torchrun or
# accelerate launch start (see README, "Scaling out"); every other one runs in one process.
LAUNCHABLE = {"pretrain", "sft", "reward", "ppo", "dpo", "grpo"}


def _launched() -> bool:
    """Whether a launcher started several processes (read here without importing torch, for a fast --help)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_launch(argv: list[str]) -> None:
    """Refuse, in one line, a command that cannot share its work when a launcher started several processes."""
    if not _launched() or not argv or argv[0].startswith("-"):
        return
    if argv[0] not in LAUNCHABLE or argv[:2] == ["reward", "eval"]:
        from alignloop.cli.common import fail

        if os.environ.get("RANK", "0") != "0":
            raise typer.Exit(2)
        fail(f"`alignloop {' '.join(argv[:2] if argv[:2] == ['reward', 'eval'] else argv[:1])}` runs in one process; "
             f"under torchrun or accelerate launch only {', '.join(sorted(LAUNCHABLE))} (training) can run")


def main() -> None:
    """Console-script entry point."""
    import signal
    import sys

    from alignloop.cli.common import raise_terminated

    signal.signal(signal.SIGTERM, raise_terminated)  # a clean, resumable stop, reported in one line

    try:
        check_launch(sys.argv[1:])
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    if not _launched():
        app()
        return
    from alignloop.train.distributed import end_launched_process

    try:
        app()
    except SystemExit as exit_:
        end_launched_process(exit_.code)  # a process that joined the group ends here
        raise
    end_launched_process(0)


if __name__ == "__main__":
    main()
