"""`alignloop report`: one self-contained `report.html` for a run, readable without any server.

Everything comes from the run directory's own artifacts: run.yaml (the
configuration), every `metrics.jsonl` (curves), `rounds/NNN/eval.json` (gold
win rate, KL, perplexity per round), `rounds/NNN/eval_samples.jsonl` (samples
before and after), and the feedback store (annotator agreement). Plots are
matplotlib PNGs embedded as data URIs; all text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from alignloop import atomic
from alignloop.runs import RunDir
from alignloop.train.metrics import read_metrics

SKIP_KEYS = {"step", "time", "lr"}


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def metric_series(records: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Every numeric metric with at least two points, as (steps, values)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in SKIP_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(record.get("step", len(steps)))
            values.append(float(value))
    return {k: v for k, v in series.items() if len(v[0]) >= 2}


def _curves_figure(title: str, series: dict[str, tuple[list[float], list[float]]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(series)
    columns = min(4, len(names))
    rows = (len(names) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = series[name]
        ax.plot(steps, values, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _rounds(run: RunDir) -> list[tuple[int, Path]]:
    folder = run.root / "rounds"
    if not folder.is_dir():
        return []
    return sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _round_table(rounds: list[tuple[int, Path]]) -> tuple[list[dict[str, Any]], str]:
    rows = []
    for number, folder in rounds:
        path = folder / "eval.json"
        if path.exists():
            try:
                rows.append({"round": number, **json.loads(path.read_text(encoding="utf-8"))})
            except json.JSONDecodeError:
                continue
    if not rows:
        return rows, "<p>No round has been evaluated yet.</p>"
    keys = [k for k in ("gold_win_rate", "rm_win_rate", "kl", "ppl_before", "ppl_after", "n") if any(k in r for r in rows)]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["round", *keys])
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in ["round", *keys]) + "</tr>" for r in rows)
    return rows, f"<table class='figures'><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape("" if value is None else str(value))


def _win_rate_figure(rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(5.5, 3.2))
    rounds = [r["round"] for r in rows]
    ax1.plot(rounds, [r.get("gold_win_rate") for r in rows], marker="o", label="gold win rate vs SFT")
    if any("rm_win_rate" in r for r in rows):
        ax1.plot(rounds, [r.get("rm_win_rate") for r in rows], marker="s", label="reward-model win rate")
    ax1.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax1.set_xlabel("round")
    ax1.set_ylim(0, 1)
    ax1.set_xticks(rounds)
    if any("kl" in r for r in rows):
        ax2 = ax1.twinx()
        ax2.plot(rounds, [r.get("kl") for r in rows], color="tab:red", marker="^", label="KL to SFT (nats)")
        ax2.set_ylabel("KL", color="tab:red")
    ax1.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def _samples_html(folder: Path, limit: int = 6) -> str:
    path = folder / "eval_samples.jsonl"
    if not path.exists():
        return ""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(record.get(k, '')))}</td>"
                                     for k in ("prompt", "sft_response", "policy_response")) + "</tr>")
    return ("<table class='samples'><tr><th>prompt</th><th>before (SFT)</th><th>after (this round)</th></tr>"
            + "".join(rows) + "</table>")


def _agreement_html(run: RunDir) -> str:
    if not run.feedback_db.exists():
        return "<p>No feedback store in this run.</p>"
    try:
        from alignloop.feedback import open_store

        store = open_store(run.feedback_db, migrate=False)
        try:
            report = store.agreement()
            annotators = store.annotator_table()
        finally:
            store.close()
    except Exception as exc:  # the report must render even if the store is unreadable
        return f"<p>Feedback store unreadable: {html.escape(str(exc).splitlines()[0] if str(exc) else '')}</p>"
    parts = ["<pre>" + html.escape(json.dumps(report, indent=2, default=str)) + "</pre>"]
    if annotators:
        keys = list(annotators[0].keys())
        parts.append("<table class='figures'><tr>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{_fmt(a.get(k))}</td>" for k in keys) + "</tr>"
                               for a in annotators) + "</table>")
    return "".join(parts)


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;font-size:.9em}
table.samples td{max-width:380px}img{max-width:100%}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}
"""


def build_report(run: RunDir) -> str:
    """The report's HTML for `run`."""
    import matplotlib.pyplot as plt

    sections = [f"<h1>alignloop report: {html.escape(str(run.root))}</h1>"]
    rounds = _rounds(run)
    rows, table = _round_table(rounds)
    sections.append("<h2 id='rounds'>Gold win rate per round</h2>" + table)
    if rows and any("gold_win_rate" in r for r in rows):
        fig = _win_rate_figure(rows)
        sections.append(f"<img class='plot' alt='win rate per round' src='{_png(fig)}'>")
        plt.close(fig)

    sections.append("<h2 id='curves'>Training curves</h2>")
    for path in sorted(run.root.rglob("metrics.jsonl")):
        if "checkpoints" in path.parts:
            continue
        series = metric_series(read_metrics(path))
        if not series:
            continue
        label = str(path.parent.relative_to(run.root))
        fig = _curves_figure(label, series)
        sections.append(f"<h3>{html.escape(label)}</h3><img class='plot' alt='{html.escape(label)} curves' "
                        f"src='{_png(fig)}'>")
        plt.close(fig)

    sections.append("<h2 id='agreement'>Annotators and agreement</h2>" + _agreement_html(run))
    sections.append("<h2 id='samples'>Samples before and after each round</h2>")
    for number, folder in rounds:
        samples = _samples_html(folder)
        if samples:
            sections.append(f"<h3>Round {number}</h3>{samples}")
    sections.append("<h2 id='config'>Configuration (run.yaml)</h2>")
    config = run.run_yaml.read_text(encoding="utf-8") if run.run_yaml.exists() else "(none)"
    sections.append(f"<pre>{html.escape(config)}</pre>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>alignloop report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")


def write_report(run: RunDir) -> Path:
    """Write `report.html` atomically; returns its path."""
    atomic.write_text(run.report, build_report(run))
    return run.report
