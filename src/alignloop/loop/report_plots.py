"""The report's plots: labelled axes, whole-number iteration ticks, PNGs embedded as data URIs.

Deterministic: the same numbers give the same bytes, so an unchanged run gives an unchanged report.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Optional, Sequence

Series = dict[str, tuple[list[float], list[float]]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> str:
    """The figure as a PNG data URI; the figure is closed."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _grid(panels: int, width: float = 3.6, height: float = 2.7):
    plt = _pyplot()
    columns = min(4, panels)
    rows = (panels + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    return fig, list(axes.flat)[:panels]


def curves_figure(title: str, series: Series, order: Sequence[str], xlabel: str):
    """One panel per metric of `series`, in `order`: the metric against `xlabel` (integer ticks)."""
    fig, axes = _grid(len(order))
    for ax, name in zip(axes, order):
        steps, values = series[name]
        ax.plot(steps, values, linewidth=1.2, marker="o" if len(steps) <= 12 else None, markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def rounds_curves_figure(per_round: dict[int, Series], names: Sequence[str], xlabel: str, labels: dict[str, str]):
    """The key RL curves: one panel per metric, one line per round (iteration within the round)."""
    fig, axes = _grid(len(names), width=4.2, height=3.0)
    for ax, name in zip(axes, names):
        for number, series in sorted(per_round.items()):
            if name in series:
                steps, values = series[name]
                ax.plot(steps, values, linewidth=1.2, marker="o" if len(steps) <= 12 else None, markersize=3,
                        label=f"round {number}")
        ax.set_title(labels.get(name, name), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(labels.get(name, name), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
        if len(per_round) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _error_bars(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float], Optional[list[list[float]]]]:
    """Rounds with a value for `key`, the values, and their [below, above] distances to `key`_ci (if every row
    has one)."""
    kept = [r for r in rows if isinstance(r.get(key), (int, float))]
    values = [float(r[key]) for r in kept]
    intervals = [r.get(f"{key}_ci") for r in kept]
    if kept and all(isinstance(i, list) and len(i) == 2 for i in intervals):
        return ([r["round"] for r in kept], values,
                [[max(v - i[0], 0.0) for v, i in zip(values, intervals)],
                 [max(i[1] - v, 0.0) for v, i in zip(values, intervals)]])
    return [r["round"] for r in kept], values, None


def per_round_figure(rows: list[dict[str, Any]]):
    """Win rates against the baseline per round with their 95% intervals, and KL with +-1.96 standard errors."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.4))
    for key, label, style in (("gold_win_rate", "gold judge", "o-"), ("rm_win_rate", "reward model", "s-"),
                              ("gold_lc_win_rate", "gold judge, length-controlled", "o:"),
                              ("rm_lc_win_rate", "reward model, length-controlled", "s:")):
        rounds, values, errors = _error_bars(rows, key)
        if rounds:
            left.errorbar(rounds, values, yerr=errors, fmt=style, capsize=4, markersize=5, label=label,
                          markerfacecolor="none" if "lc" in key else None)
    left.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    left.set_ylim(0, 1)
    left.set_xlabel("round", fontsize=9)
    left.set_ylabel("win rate against the baseline", fontsize=9)
    left.set_title("win rate per round (95% intervals)", fontsize=10)
    left.legend(fontsize=7, loc="lower left")
    kl_rows = [r for r in rows if isinstance(r.get("kl"), (int, float))]
    se = [r.get("kl_se") for r in kl_rows]
    right.errorbar([r["round"] for r in kl_rows], [r["kl"] for r in kl_rows],
                   yerr=[1.96 * s for s in se] if kl_rows and all(isinstance(s, (int, float)) for s in se) else None,
                   fmt="^-", color="tab:red", capsize=4, markersize=5)
    right.set_xlabel("round", fontsize=9)
    right.set_ylabel("KL to the reference (nats)", fontsize=9)
    right.set_title("KL per round (+-1.96 standard errors)", fontsize=10)
    for ax in (left, right):
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
        numbers = sorted({r["round"] for r in rows})
        if numbers:
            ax.set_xlim(numbers[0] - 0.5, numbers[-1] + 0.5)
    fig.tight_layout()
    return fig


def guard_figure(title: str, checks: Sequence[dict[str, Any]]):
    """The over-optimisation picture of Gao et al. 2022 from a run's guard checks: the proxy (RL reward model,
    left axis) and the held-out score (right axis) against the KL to the reference; the stop and the kept
    check marked."""
    plt = _pyplot()
    fig, proxy_ax = plt.subplots(figsize=(5.6, 3.4))
    kl = [c["kl"] for c in checks]
    proxy_ax.plot(kl, [c["proxy"] for c in checks], "o-", color="tab:blue", markersize=4, label="proxy (RL reward)")
    proxy_ax.set_xlabel("KL to the reference (nats)", fontsize=9)
    proxy_ax.set_ylabel("proxy reward", fontsize=9, color="tab:blue")
    handles = proxy_ax.get_lines()[:]
    held = [c for c in checks if c.get("heldout") is not None]
    if held:
        heldout_ax = proxy_ax.twinx()
        heldout_ax.plot([c["kl"] for c in held], [c["heldout"] for c in held], "s-", color="tab:green", markersize=4,
                        label="held-out score")
        heldout_ax.set_ylabel("held-out score", fontsize=9, color="tab:green")
        heldout_ax.tick_params(labelsize=8)
        handles += heldout_ax.get_lines()[:]
        kept = [c for c in held if c.get("iteration") == checks[-1].get("kept")]
        if kept:
            handles += heldout_ax.plot([kept[0]["kl"]], [kept[0]["heldout"]], "*", color="gold", markersize=14,
                                       markeredgecolor="black", label=f"kept (iteration {kept[0]['iteration']})")
    stop = next((c for c in checks if c.get("stopped")), None)
    if stop is not None:
        handles.append(proxy_ax.axvline(stop["kl"], color="tab:red", linestyle="--", linewidth=1,
                                        label=f"stop (iteration {stop['iteration']})"))
    proxy_ax.tick_params(labelsize=8)
    proxy_ax.grid(alpha=0.3)
    proxy_ax.legend(handles=handles, fontsize=7, loc="best")
    proxy_ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
