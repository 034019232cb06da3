"""`alignloop report`: one self-contained `report.html` for a run, readable without any server.

Everything comes from the run directory's own artifacts: run.yaml (the
configuration), every `metrics.jsonl` (curves), `rounds/NNN/eval.json` (win
rates with their intervals, KL, perplexity per round),
`rounds/NNN/reward/eval.json` (`alignloop reward eval`: accuracy, length and
truncation diagnostics), `rounds/NNN/eval_samples.jsonl` (samples before and
after), and the feedback store (judgments and annotator agreement per round).

The page follows the pipeline: the key curves and the figures per round
first, then pretraining, SFT, and each round (feedback, reward model, RL,
evaluation), then the configuration. Plots are matplotlib PNGs embedded as
data URIs; all text is HTML-escaped. The file is rewritten only when its
content changes.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from alignloop import atomic
from alignloop.loop import report_plots as plots
from alignloop.loop.algorithms import round_algorithm
from alignloop.runs import RunDir
from alignloop.train.metrics import read_metrics

# Not plotted: bookkeeping that only counts or schedules (steps, epochs, timestamps, the learning-rate
# schedule) and the speed of the machine (seconds and throughputs, summarised in a line instead).
SKIP_KEYS = {"step", "time", "lr", "epoch", "epochs_run", "minibatch_steps", "val_n", "n"}
SPEED_SUFFIXES = ("_per_s", "_s")
# Shown first, in this order, wherever they occur: what the stage optimises and how far it moved.
KEY_METRICS = ("score", "kl", "reward", "reward_with_kl", "loss", "val_loss", "accuracy", "val_accuracy",
               "reward_accuracy", "val_reward_accuracy", "val_perplexity", "val_ece")
OVERVIEW_METRICS = ("score", "kl", "reward")
OVERVIEW_LABELS = {"score": "reward-model score", "kl": "KL to the reference (nats)",
                   "reward": "shaped reward (normalised)"}
RL_FOLDERS = ("ppo", "grpo", "dpo", "distill")  # distill: the loop's best-of-n distillation


def _is_speed(key: str) -> bool:
    return key.endswith(SPEED_SUFFIXES)


def metric_series(records: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Every numeric metric as (steps, values), bookkeeping left out."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in SKIP_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(record.get("step", len(steps)))
            values.append(float(value))
    return series


def plot_order(series: dict[str, tuple[list[float], list[float]]]) -> tuple[list[str], dict[str, float], list[str]]:
    """(metrics to plot, key ones first; metrics with one value throughout (or one point), and that value;
    speed metrics)."""
    speed = sorted(k for k in series if _is_speed(k))
    constant = {k: v[1][-1] for k, v in series.items() if k not in speed and len(set(v[1])) == 1}
    varying = [k for k in series if k not in speed and k not in constant]
    key = [k for k in KEY_METRICS if k in varying]
    return key + sorted(k for k in varying if k not in key), constant, speed


def read_artifact(path: Path) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(the JSON object in `path`, None), or (None, why it could not be read); (None, None) when absent."""
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return None, f"{path.name} unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if not isinstance(data, dict):
        return None, f"{path.name} does not hold a JSON object"
    return data, None


# ---- formatting ------------------------------------------------------------------------------------

def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape("" if value is None else str(value))


def _share(value: Any, interval: Any = None) -> str:
    """A share as a percentage, with its interval when there is one."""
    if not _finite(value):
        return "n/a"
    text = f"{value:.1%}"
    if isinstance(interval, list) and len(interval) == 2 and all(_finite(x) for x in interval):
        text += f" [{interval[0]:.1%}, {interval[1]:.1%}]"
    return text


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], css: str = "figures") -> str:
    """A table of already-escaped cells."""
    header = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{css}'><tr>{header}</tr>{body}</table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{body}</section>"


def _img(uri: str, alt: str) -> str:
    return f"<img class='plot' alt='{html.escape(alt)}' src='{uri}'>"


# ---- artifacts -------------------------------------------------------------------------------------

def _rounds(run: RunDir) -> list[tuple[int, Path]]:
    folder = run.root / "rounds"
    if not folder.is_dir():
        return []
    return sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _metrics_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("metrics.jsonl") if "checkpoints" not in p.relative_to(folder).parts)


def _curves_html(run: RunDir, path: Path, xlabel: str) -> str:
    series = metric_series(read_metrics(path))
    label = str(path.parent.relative_to(run.root))
    order, constant, speed = plot_order(series)
    parts = []
    if order:
        parts.append(_img(plots.png(plots.curves_figure(label, series, order, xlabel)), f"{label} curves"))
    notes = []
    if constant:
        notes.append("one value throughout: "
                     + ", ".join(f"{html.escape(k)} = {_fmt(v)}" for k, v in sorted(constant.items())))
    if speed:
        notes.append("speed (median): " + ", ".join(
            f"{html.escape(k)} {_fmt(sorted(series[k][1])[len(series[k][1]) // 2])}" for k in speed))
    if notes:
        parts.append(f"<p class='note'>{'; '.join(notes)}</p>")
    return "".join(parts)


def _stage_section(run: RunDir, stage: str, title: str) -> str:
    folder = run.root / stage
    files = _metrics_files(folder) if folder.is_dir() else []
    body = "".join(_curves_html(run, path, "step") for path in files)
    return _section(stage, title, _stale_note(run, lambda key: key == stage)
                    + (body or f"<p>No {html.escape(stage)} metrics in this run.</p>"))


def _evaluations(folder: Path) -> list[tuple[str, Optional[dict[str, Any]], Optional[str]]]:
    """(label, eval.json's figures, why unreadable) of a round: the round's policy first, then the others
    (best-of-n, GRPO, DPO, checkpoints from elsewhere)."""
    found = []
    for path in [folder / "eval.json", *sorted(folder.glob("*/eval.json"))]:
        if path.parent.name == "reward":
            continue
        data, problem = read_artifact(path)
        if data is not None or problem is not None:
            found.append(("policy" if path.parent == folder else path.parent.name, data, problem))
    return found


# ---- the overview --------------------------------------------------------------------------------

def _round_rows(run: RunDir, rounds: list[tuple[int, Path]]) -> list[dict[str, Any]]:
    """The main evaluation of every round that has one (rounds/NNN/eval.json), with the round's algorithm."""
    stages = run.read_manifest()["stages"]
    rows = []
    for number, folder in rounds:
        data, _ = read_artifact(folder / "eval.json")
        if data is not None:
            rows.append({"round": number, "algorithm": round_algorithm(stages, number), **data})
    return rows


def _evaluation_cells(r: dict[str, Any]) -> list[str]:
    kl = _fmt(r.get("kl"))
    if _finite(r.get("kl_se")):
        kl += f" &plusmn; {r['kl_se']:.3f}"
    gold = _share(r.get("gold_win_rate"), r.get("gold_win_rate_ci"))
    if r.get("gold_omitted"):
        gold = f"<span title='{html.escape(str(r['gold_omitted']))}'>left out</span>"
    return [gold, _share(r.get("gold_lc_win_rate"), r.get("gold_lc_win_rate_ci")),
            _share(r.get("rm_win_rate"), r.get("rm_win_rate_ci")),
            _share(r.get("rm_lc_win_rate"), r.get("rm_lc_win_rate_ci")), kl,
            f"{_fmt(r.get('ppl_before'))} &rarr; {_fmt(r.get('ppl_after'))}", _fmt(r.get("n"))]


EVALUATION_HEAD = ("gold win rate [95%]", "gold, length-controlled", "reward-model win rate [95%]",
                   "reward model, length-controlled", "KL (nats) &plusmn; s.e.", "perplexity before &rarr; after",
                   "prompts")


def _overview(run: RunDir, rounds: list[tuple[int, Path]], rows: list[dict[str, Any]]) -> str:
    parts = []
    per_round: dict[int, dict[str, tuple[list[float], list[float]]]] = {}
    xlabel = "iteration"
    for number, folder in rounds:
        for method in RL_FOLDERS:
            series = metric_series(read_metrics(folder / method / "metrics.jsonl"))
            if any(name in series for name in OVERVIEW_METRICS):
                per_round[number] = series
                break
    names = [n for n in OVERVIEW_METRICS if any(n in s for s in per_round.values())]
    if names:
        parts.append("<h3>RL curves of every round</h3>" + _img(plots.png(
            plots.rounds_curves_figure(per_round, names, xlabel, OVERVIEW_LABELS)), "key RL curves"))
    if not rows:
        parts.append("<p>No round has been evaluated yet (<code>alignloop eval</code>).</p>")
        return _section("overview", "Overview", "".join(parts))
    parts.append("<h3 id='rounds'>Each round's policy against the baseline</h3>")
    parts.append(_table(["round", "algorithm", *EVALUATION_HEAD],
                        ([_fmt(r["round"]), html.escape(str(r.get("algorithm") or "n/a")), *_evaluation_cells(r)]
                         for r in rows)))
    omitted = [r for r in rows if r.get("gold_omitted")]
    if omitted:
        parts.append("".join(f"<p class='note'>Round {r['round']}: gold judge left out: "
                             f"{html.escape(str(r['gold_omitted']))}</p>" for r in omitted))
    bootstrap = next((r["bootstrap"] for r in rows if isinstance(r.get("bootstrap"), dict)), None)
    if bootstrap:
        parts.append(f"<p class='note'>Intervals: {html.escape(str(bootstrap.get('method')))}, "
                     f"{_fmt(bootstrap.get('resamples'))} resamples, seed {_fmt(bootstrap.get('seed'))}. "
                     "Length-controlled: the win rate predicted for equally long responses by a logistic fit "
                     "on the length difference (docs/metrics.md).</p>")
    parts.append(_img(plots.png(plots.per_round_figure(rows)), "win rate and KL per round"))
    return _section("overview", "Overview", "".join(parts))


# ---- feedback ------------------------------------------------------------------------------------

def _feedback(run: RunDir) -> tuple[dict[int, str], str]:
    """Per round number: its judgments and agreement as tables; and the annotator table of the whole store."""
    if not run.feedback_db.exists():
        return {}, "<p>No feedback store in this run.</p>"
    try:
        from alignloop.feedback import open_store
        from alignloop.feedback.reading import judgment_rows

        store = open_store(run.feedback_db, migrate=False)
        try:
            per_round = {r["number"]: (judgment_rows(store, r["id"]), store.agreement(r["id"]))
                         for r in store.rounds()}
            annotators = store.annotator_table()
        finally:
            store.close()
    except Exception as exc:  # the report must render even if the store is unreadable
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {}, f"<p>Feedback store unreadable: {html.escape(message)}</p>"
    sections = {number: _judgments_table(rows) + _agreement_table(agreement)
                for number, (rows, agreement) in per_round.items()}
    if not annotators:
        return sections, "<p>No annotator accounts.</p>"
    keys = list(annotators[0].keys())
    return sections, _table([html.escape(k) for k in keys], ([_fmt(a.get(k)) for k in keys] for a in annotators))


def _judgments_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No judgments in this round.</p>"
    kinds: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = kinds.setdefault(row["kind"], {"items": set(), "judgments": 0, "imported": 0, "annotators": set()})
        entry["items"].add(row["item_id"])
        if row.get("annotator_origin") == "import":
            entry["imported"] += 1
        else:
            entry["judgments"] += 1
            entry["annotators"].add(row["annotator"])
    return _table(["kind", "items judged", "judgments", "annotators", "imported labels"],
                  ([html.escape(kind), str(len(e["items"])), str(e["judgments"]), str(len(e["annotators"])),
                    str(e["imported"])] for kind, e in sorted(kinds.items())))


def _agreement_table(report: dict[str, Any]) -> str:
    """Agreement per item kind: what was compared, how many, Krippendorff's alpha, Fleiss' kappa."""
    rows = []
    pair = report.get("pair") or {}
    if pair.get("items"):
        rows.append(["pair", "items judged by 2+", _fmt(pair.get("items")), _fmt(pair.get("krippendorff_alpha")),
                     _fmt(pair.get("fleiss_kappa"))])
    ranking = report.get("ranking") or {}
    if ranking.get("response_pairs"):
        rows.append(["ranking", "response pairs ranked by 2+", _fmt(ranking.get("response_pairs")),
                     _fmt(ranking.get("krippendorff_alpha")), ""])
    for aspect, figures in sorted((report.get("rating") or {}).items()):
        if figures.get("responses"):
            rows.append([f"rating: {html.escape(aspect)}", "responses rated by 2+", _fmt(figures.get("responses")),
                         _fmt(figures.get("krippendorff_alpha")), ""])
    if not rows:
        return "<p>Agreement: no item was judged by two or more annotators.</p>"
    return _table(["kind", "units", "n", "Krippendorff's alpha", "Fleiss' kappa"], rows)


# ---- a round's reward model, RL and evaluation -------------------------------------------------

def _reward_html(run: RunDir, folder: Path) -> str:
    parts = []
    figures, problem = read_artifact(folder / "reward" / "eval.json")
    if problem:
        parts.append(f"<p>{html.escape(problem)}</p>")
    elif figures is None:
        parts.append(f"<p>No <code>alignloop reward eval</code> for this round yet (run <code>alignloop reward eval "
                     f"--run {html.escape(str(run.root))} round={int(folder.name)}</code>).</p>")
    else:
        parts.append(_reward_eval_html(figures))
    reward = folder / "reward"
    for path in _metrics_files(reward) if reward.is_dir() else []:
        parts.append(_curves_html(run, path, "step"))
    return "".join(parts)


def _reward_eval_html(figures: dict[str, Any]) -> str:
    sources = [("preferences", "people", figures if figures.get("n") else {})]
    sources += [(name, chooser, figures[key] if isinstance(figures.get(key), dict) else {})
                for key, name, chooser in (("gold", "gold judge", "the gold judge"),
                                           ("ensemble", "preferences, ensemble", "people"),
                                           ("gold_ensemble", "gold judge, ensemble", "the gold judge"))]
    rows = [[name + (f" ({html.escape(str(figures.get('split')))} split)" if chooser == "people"
                     and figures.get("split") else ""),
             _fmt(source.get("n")), _share(source.get("accuracy"), source.get("accuracy_ci")),
             _fmt(source.get("loss")), _fmt(source.get("ece"))] for name, chooser, source in sources if source]
    parts = [_table(["pairs", "n", "accuracy [95%]", "loss", "ECE"], rows, css="figures reward-eval")] if rows else []
    estimates = figures.get("ensemble_estimates")
    if isinstance(estimates, dict):
        parts.append(f"<p class='note'>Ensemble: the mean of {_fmt(estimates.get('estimates'))} normalised "
                     f"estimates ({_fmt(estimates.get('models'))} model(s)), the reward RL optimises with "
                     f"<code>reward.uncertainty=mean</code>; the other rows are <code>final/</code>'s.</p>")
    for key in ("gold_omitted", "ensemble_omitted"):
        if figures.get(key):
            what = "Gold judge" if key == "gold_omitted" else "Ensemble"
            parts.append(f"<p class='note'>{what} left out: {html.escape(str(figures[key]))}</p>")
    for name, chooser, source in sources:
        if isinstance(source.get("length"), dict):
            parts.append(_length_table(name, chooser, source["length"], source.get("truncation")))
    return "".join(parts)


def _length_table(name: str, chooser: str, length: dict[str, Any], truncation: Any) -> str:
    """Where a reward model that pays for length shows it: accuracy when `chooser` chose the longer or the
    shorter reply, against the 'longer wins' baseline; reward-length correlation; accuracy on cut replies."""
    rows = []
    for key, label in (("chosen_longer", f"{chooser} chose the longer reply"),
                       ("chosen_shorter", f"{chooser} chose the shorter reply"), ("same_length", "equally long")):
        bucket = length.get(key) or {}
        if bucket.get("n"):
            rows.append([label, _fmt(bucket.get("n")), _share(bucket.get("accuracy"), bucket.get("accuracy_ci"))])
    if isinstance(truncation, dict):
        for key, label in (("cut", f"a reply cut at max_length {_fmt(truncation.get('max_length'))}"),
                           ("whole", "both replies read whole")):
            bucket = truncation.get(key) or {}
            if bucket.get("n"):
                rows.append([label, _fmt(bucket.get("n")), _share(bucket.get("accuracy"))])
    rho = length.get("reward_length_spearman")
    note = (f"'The longer reply wins' scores {_share(length.get('longer_wins_accuracy'))} on these pairs; the model "
            f"prefers the longer reply in {_share(length.get('model_prefers_longer'))} of unequal pairs; rank "
            f"correlation of reward with length ({html.escape(str(length.get('unit', '')))}) "
            f"{'n/a' if not _finite(rho) else f'{rho:.2f}'}.")
    return (f"<h4>Length and truncation ({html.escape(name)})</h4>"
            + _table(["pairs where", "n", "accuracy [95%]"], rows, css="figures length")
            + f"<p class='note'>{note}</p>")


def _rl_html(run: RunDir, folder: Path) -> str:
    parts = []
    for method in RL_FOLDERS:
        path = folder / method / "metrics.jsonl"
        if path.exists():
            parts.append(_curves_html(run, path, "iteration" if method in ("ppo", "grpo") else "step"))
        parts.append(_guard_html(run, folder / method / "guard.jsonl"))
    return "".join(parts) or "<p>No RL metrics in this round.</p>"


def _guard_html(run: RunDir, path: Path) -> str:
    """The over-optimisation guard's checks of a run (`alignloop.rl.guard`): proxy and held-out score against KL,
    and a line on the stop."""
    checks = [c for c in read_metrics(path) if all(_finite(c.get(k)) for k in ("kl", "proxy"))] \
        if path.exists() else []
    if not checks:
        return ""
    label = str(path.parent.relative_to(run.root))
    stop = next((c for c in checks if c.get("stopped")), None)
    fired = [c for c in checks if c.get("fired")]
    note = (f"stopped at iteration {stop['iteration']} ({html.escape(str(stop['fired']))}); kept the policy of "
            f"iteration {stop.get('kept') or stop['iteration']}" if stop else
            f"fired at {len(fired)} of {len(checks)} checks, first at iteration {fired[0]['iteration']} "
            f"({html.escape(str(fired[0]['fired']))})" if fired else f"{len(checks)} checks, never fired")
    return (_img(plots.png(plots.guard_figure(f"{label}: over-optimisation guard", checks)), f"{label} guard")
            + f"<p class='note'>Over-optimisation guard: {note}.</p>")


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
        if isinstance(record, dict):
            rows.append([html.escape(str(record.get(k, ""))) for k in ("prompt", "sft_response", "policy_response")])
    return _table(["prompt", "before (baseline)", "after (this round)"], rows, css="samples") if rows else ""


def _evaluation_html(folder: Path) -> str:
    found = _evaluations(folder)
    if not found:
        return "<p>Not evaluated yet.</p>"
    rows, problems = [], []
    for label, data, problem in found:
        if data is None:
            problems.append(f"<p>{html.escape(label)}: {html.escape(str(problem))}</p>")
        else:
            rows.append([html.escape(label), *_evaluation_cells(data)])
    table = _table(["evaluated", *EVALUATION_HEAD], rows) if rows else ""
    return table + "".join(problems) + _samples_html(folder)


def _stale_note(run: RunDir, belongs: Callable[[str], bool]) -> str:
    """A warning for the stages (of a section) whose inputs were redone after they ran: what the section
    shows of them no longer follows from what is upstream now."""
    stale = [(key, entry["stale"]) for key, entry in run.read_manifest()["stages"].items()
             if belongs(key) and entry.get("stale")]
    if not stale:
        return ""
    items = "; ".join(f"{html.escape(key)} ({html.escape(str(reason))})" for key, reason in stale)
    return (f"<p class='stale'><b>Stale:</b> {items}. What is shown of them was made from inputs that have "
            f"since been redone; rerun them (with --force) to bring them up to date.</p>")


def _round_section(run: RunDir, number: int, folder: Path, feedback: dict[int, str]) -> str:
    suffix = f":{number:03d}"
    algorithm = round_algorithm(run.read_manifest()["stages"], number)
    return _section(f"round-{number:03d}", f"Round {number}",
                    _stale_note(run, lambda key: key.endswith(suffix) or f"{suffix}/" in key) +
                    "<h3>Feedback and agreement</h3>"
                    f"{feedback.get(number, '<p>No feedback round with this number in the store.</p>')}"
                    f"<h3>Reward model</h3>{_reward_html(run, folder)}"
                    f"<h3>RL{f' ({html.escape(algorithm)})' if algorithm else ''}</h3>{_rl_html(run, folder)}"
                    f"<h3>Evaluation</h3>{_evaluation_html(folder)}")


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}h4{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;font-size:.9em}
table.samples td{max-width:380px}img{max-width:100%}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}
p.note{font-size:.85em;color:#555}nav a{margin-right:.8em}p.stale{background:#fff3cd;padding:.5em}
"""


def build_report(run: RunDir) -> str:
    """The report's HTML for `run`."""
    rounds = _rounds(run)
    rows = _round_rows(run, rounds)
    feedback, annotators = _feedback(run)
    links = [("overview", "Overview"), ("pretrain", "Pretraining"), ("sft", "SFT"),
             *((f"round-{n:03d}", f"Round {n}") for n, _ in rounds), ("annotators", "Annotators"),
             ("config", "Configuration")]
    sections = [f"<h1>alignloop report: {html.escape(str(run.root))}</h1>",
                "<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in links) + "</nav>",
                _overview(run, rounds, rows),
                _stage_section(run, "pretrain", "Pretraining"),
                _stage_section(run, "sft", "Supervised fine-tuning")]
    sections += [_round_section(run, number, folder, feedback) for number, folder in rounds]
    sections.append(_section("annotators", "Annotators (all rounds)", annotators))
    config = run.run_yaml.read_text(encoding="utf-8") if run.run_yaml.exists() else "(none)"
    sections.append(_section("config", "Configuration (run.yaml)", f"<pre>{html.escape(config)}</pre>"))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>alignloop report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")


def write_report(run: RunDir) -> Path:
    """Write `report.html` atomically, and only when its content changed (a rerun leaves it untouched)."""
    text = build_report(run)
    try:
        unchanged = run.report.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        unchanged = False
    if not unchanged:
        atomic.write_text(run.report, text)
    return run.report
