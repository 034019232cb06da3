"""The table `alignloop loop` and `alignloop demo` end with: each round's policy against the SFT model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

COLUMNS = ("round", "algorithm", "gold win rate [95% CI]", "reward-model win rate [95% CI]", "KL (nats) +- s.e.",
           "held-out perplexity")


def _rate(result: dict[str, Any], judge: str) -> str:
    """A win rate with its 95% interval when the evaluation has one."""
    rate, interval = result.get(f"{judge}_win_rate"), result.get(f"{judge}_win_rate_ci")
    if rate is None:
        return "n/a"
    return f"{rate:.1%}" + (f" [{interval[0]:.1%}, {interval[1]:.1%}]" if interval else "")


def summary_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row of figures per round's evaluation (`eval.json`, with the round's `algorithm`), in round order."""
    rows = []
    for number, result in enumerate(results, start=1):
        kl, before, after = result.get("kl"), result.get("ppl_before"), result.get("ppl_after")
        kl_se = result.get("kl_se")
        rows.append([str(number), result.get("algorithm") or "n/a", _rate(result, "gold"), _rate(result, "rm"),
                     "n/a" if kl is None else f"{kl:.2f}" + (f" +- {kl_se:.2f}" if kl_se is not None else ""),
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
