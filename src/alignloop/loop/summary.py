"""The table `alignloop loop` and `alignloop demo` end with: each round's policy against the SFT model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

COLUMNS = ("round", "gold win rate", "reward-model win rate", "KL (nats)", "held-out perplexity")


def _share(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def summary_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row of figures per round's evaluation (`eval.json`), in round order."""
    rows = []
    for number, result in enumerate(results, start=1):
        kl, before, after = result.get("kl"), result.get("ppl_before"), result.get("ppl_after")
        rows.append([str(number), _share(result.get("gold_win_rate")), _share(result.get("rm_win_rate")),
                     "n/a" if kl is None else f"{kl:.2f}",
                     "n/a" if before is None or after is None else f"{before:.2f} -> {after:.2f}"])
    return rows


def print_summary(results: list[dict[str, Any]], title: str, report: Optional[Path]) -> None:
    """The rounds' table and the report's path, on stderr."""
    table = Table(title=f"{title}: policy of each round against the SFT model")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for row in summary_rows(results):
        table.add_row(*row)
    console = Console(stderr=True)
    console.print(table)
    if report is not None:
        console.print(f"report: {report}", highlight=False, soft_wrap=True)
