"""What every stage command shares: `--run`, `--config`, dotted overrides, and error reporting.

Commands wrap their body in `reporting_errors()`: an `AlignloopError` becomes one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from alignloop.config.base import load_config
from alignloop.errors import AlignloopError, disk_full_error, is_disk_full
from alignloop.runs import RunDir

T = TypeVar("T", bound=BaseModel)

console = Console(stderr=True)

# `-r` too: under `torchrun`, whose own parser takes `--run` for its `--run-path`, only `-r` gets through.
RunOption = Annotated[Path, typer.Option("--run", "-r", help="Run directory (created if missing), e.g. runs/demo.")]
ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", help="YAML file with this stage's settings (see `alignloop config show STAGE`).")
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace work this stage already did from other inputs (settings, data, "
                                       "models), and mark what was built on it as stale. Without it such work "
                                       "is never overwritten.")]
OverridesArgument = Annotated[
    Optional[list[str]],
    typer.Argument(metavar="KEY=VALUE", show_default=False,
                   help="Settings applied last, as dotted key=value (the most used are listed below; every one: "
                        "`alignloop config show STAGE`)."),
]


class _PlainFlags:
    """Help with no type beside a flag: `--human` takes no value, so typer's `<bool>` there only misleads."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_PlainFlags, TyperCommand):
    """Every alignloop command."""


class Group(_PlainFlags, TyperGroup):
    """Every alignloop group of commands."""


class App(typer.Typer):
    """A typer app whose commands and groups show flags as flags (see `_PlainFlags`)."""

    def __init__(self, **kwargs):  # noqa: ANN003
        kwargs.setdefault("cls", Group)
        super().__init__(**kwargs)

    def command(self, name=None, *, cls=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        return super().command(name, cls=cls or Command, **kwargs)


def fail(message: str, code: int = 2) -> None:
    """Print `error: message` on one line and exit with `code` (under a launcher, rank 0 alone prints it)."""
    if os.environ.get("RANK", "0") != "0":
        raise typer.Exit(code)
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so atomic writes clean up after themselves."""


def raise_terminated(signum, frame) -> None:  # noqa: ANN001
    """A SIGTERM handler (installed by the entry point)."""
    raise Terminated()


@contextlib.contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn project errors (and a few predictable system ones) into one line and exit 2."""
    try:
        yield
    except AlignloopError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume", 130)
    except Terminated:
        fail("terminated (SIGTERM); rerun the same command to resume", 143)
    except MemoryError:
        fail("out of memory; lower the batch size or sequence length", 3)
    except Exception as exc:  # noqa: BLE001 - only a full disk and other OS errors are ours to word
        if os.environ.get("ALIGNLOOP_DEBUG"):
            raise
        if is_disk_full(exc):
            # A write outside alignloop.atomic (metrics, the feedback store): name the file when known.
            where = getattr(exc, "filename", None) or ("the feedback store" if "database" in str(exc) else None)
            fail(str(disk_full_error(where)) if where else "no space left on device; free some space and rerun")
        if not isinstance(exc, OSError):
            raise
        fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), 2)


@contextlib.contextmanager
def writing_run(run: Path) -> Iterator[RunDir]:
    """The run directory of a command that writes it: created if missing, held for this command alone
    (`RunDir.lock`), and removed again if the command fails before leaving anything in it."""
    run_dir = RunDir(run)
    existed = run_dir.root.exists()
    try:
        with run_dir.lock():
            yield run_dir
    except BaseException:
        if not existed and run_dir.root.is_dir() and not any(run_dir.root.iterdir()):
            run_dir.root.rmdir()
        raise


def run_stage(stage: str, function: str, run: Path, config: Optional[Path], overrides: Optional[list[str]],
              force: bool, **kwargs: Any) -> Any:
    """The body of a stage command: `function` ("module:name", imported only now so that --help stays fast)
    runs on the run directory, held for this command, with the stage's config from `--config` and the
    overrides; errors become one line. Returns what the function returns."""
    with reporting_errors(), writing_run(run) as run_dir:
        from alignloop.config.registry import config_class

        module, name = function.split(":")
        stage_function = getattr(importlib.import_module(module), name)
        return stage_function(run_dir, resolve(config_class(stage), config, overrides), log=echo, force=force,
                              **kwargs)


def resolve(cls: type[T], config: Path | None, overrides: list[str] | None, defaults: dict | None = None) -> T:
    """Load the stage config from the optional YAML file and the overrides."""
    return load_config(cls, config, overrides, defaults)


def echo(message: str) -> None:
    """Progress and results for people go to stderr; stdout stays for data (generated text, YAML).

    Under a launcher (torchrun, accelerate launch: RANK set) only rank 0 speaks.
    """
    if os.environ.get("RANK", "0") != "0":
        return
    console.print(message, highlight=False, soft_wrap=True)


def out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
