"""`alignloop report` writes a self-contained report.html; rendered in headless Chromium it shows plots and tables."""

import json
import re
from pathlib import Path

import pytest

from alignloop.feedback import open_store
from alignloop.loop import report_plots
from alignloop.loop.report import metric_series, plot_order, write_report
from alignloop.runs import RunDir
from conftest import run_cli

XSS = '<script>document.title="pwned"</script><img src=x onerror="document.body.dataset.pwned=1">'


def _write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


REWARD_EVAL = {
    "n": 40, "accuracy": 0.6, "accuracy_ci": [0.45, 0.74], "loss": 0.66, "ece": 0.05, "split": "val",
    "length": {"unit": "characters",
               "chosen_longer": {"n": 23, "accuracy": 0.74, "accuracy_ci": [0.55, 0.9]},
               "chosen_shorter": {"n": 17, "accuracy": 0.41, "accuracy_ci": [0.2, 0.65]},
               "same_length": {"n": 0, "accuracy": None, "accuracy_ci": None},
               "longer_wins_accuracy": 0.575, "model_prefers_longer": 0.73, "reward_length_spearman": 0.49},
    "truncation": {"max_length": 128, "cut": {"n": 5, "accuracy": 0.4}, "whole": {"n": 35, "accuracy": 0.63}},
    "gold_omitted": "the gold judge scores the built-in story task only",
    "ensemble_estimates": {"models": 2, "estimates": 4},
    "ensemble": {"n": 40, "accuracy": 0.625, "accuracy_ci": [0.47, 0.77], "loss": 0.65, "ece": 0.04,
                 "length": {"unit": "characters", "chosen_shorter": {"n": 17, "accuracy": 0.53},
                            "reward_length_spearman": 0.12}},
}


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """The artifacts a two-round run leaves behind, written directly: round 1's evaluation as written before
    intervals existed, round 2's with them."""
    run = tmp_path / "run"
    (run).mkdir()
    (run / "run.yaml").write_text("pretrain:\n  model:\n    preset: tiny\n")
    _write_jsonl(run / "pretrain" / "metrics.jsonl",
                 [{"step": s, "loss": 5.0 / s, "val_loss": 5.5 / s, "val_perplexity": 9.0 / s} for s in range(1, 6)])
    for number, win in ((1, 0.6), (2, 0.7)):
        folder = run / "rounds" / f"{number:03d}"
        _write_jsonl(folder / "ppo" / "metrics.jsonl",
                     [{"step": s, "score": 0.1 * s, "kl": 0.2 * s, "entropy": 3 - 0.1 * s, "epochs_run": 4,
                       "minibatch_steps": 8, "rollout_s": 0.1 * s, "kl_coef": 0.05} for s in range(1, 5)])
        figures = {"gold_win_rate": win, "rm_win_rate": win + 0.1, "kl": number * 1.5, "ppl_before": 4.0,
                   "ppl_after": 4.1, "n": 50}
        if number == 2:
            figures.update(gold_win_rate_ci=[0.61, 0.79], gold_lc_win_rate=0.66, gold_lc_win_rate_ci=[0.57, 0.75],
                           rm_win_rate_ci=[0.7, 0.88], kl_se=0.25, gold_omitted=None,
                           bootstrap={"method": "paired bootstrap over prompts", "resamples": 1000, "seed": 0})
        (folder / "eval.json").write_text(json.dumps(figures))
        _write_jsonl(folder / "eval_samples.jsonl",
                     [{"prompt": "Tom had a ball.", "sft_response": XSS, "policy_response": "Tom shared it. The end."}])
    (run / "rounds" / "001" / "reward").mkdir()
    (run / "rounds" / "001" / "reward" / "eval.json").write_text(json.dumps(REWARD_EVAL))
    store = open_store(run / "feedback.db")
    try:
        store.create_round("round 1", number=1)
    finally:
        store.close()
    return run


def test_report_renders_plots_tables_and_escapes_samples(finished_run, browser):
    result = run_cli("report", "--run", str(finished_run))
    assert result.returncode == 0, result.stderr
    report = finished_run / "report.html"
    html = report.read_text()
    assert "<script>document.title" not in html  # escaped at the source

    page = browser.new_page()
    page.goto(report.as_uri())
    images = page.locator("img.plot")
    # The RL curves of every round and the win rate and KL per round; pretraining; each round's PPO.
    assert images.count() == 5
    loaded = page.evaluate("Array.from(document.querySelectorAll('img.plot')).every(i => i.naturalWidth > 100)")
    assert loaded
    # Pipeline order: the overview, pretraining, SFT, then each round, then the annotators and configuration.
    order = page.evaluate("Array.from(document.querySelectorAll('body > section')).map(s => s.id)")
    assert order == ["overview", "pretrain", "sft", "round-001", "round-002", "annotators", "config"]
    overview = page.locator("#overview table.figures")
    assert overview.locator("tr").count() == 3  # header + two rounds
    text = overview.inner_text()
    assert "70.0% [61.0%, 79.0%]" in text and "66.0% [57.0%, 75.0%]" in text and "3.000 ± 0.250" in text
    assert "60.0%" in text  # round 1 has no interval: the rate alone
    reward = page.locator("#round-001 table.reward-eval").inner_text()
    assert "60.0% [45.0%, 74.0%]" in reward
    # The reward RL optimises, when it is an ensemble: its own row and its own length table.
    assert re.search(r"preferences, ensemble \(val split\)\s+40\s+62.5% \[47.0%, 77.0%\]", reward)
    assert "the mean of 4 normalised estimates (2 model(s))" in page.inner_text("#round-001")
    assert page.locator("#round-001 table.length").count() == 2
    assert "53.0%" in page.locator("#round-001 table.length").nth(1).inner_text()
    length = page.locator("#round-001 table.length").first.inner_text()
    assert "people chose the shorter reply" in length and "41.0% [20.0%, 65.0%]" in length
    assert "a reply cut at max_length 128" in length
    assert "'The longer reply wins' scores 57.5%" in page.inner_text("#round-001")
    assert "Gold judge left out: the gold judge scores the built-in story task only" in page.inner_text("#round-001")
    assert "No alignloop reward eval for this round yet" in page.inner_text("#round-002")
    sample_text = page.locator("table.samples").first.inner_text()
    assert "document.title" in sample_text  # shown as text
    assert page.title() == "alignloop report"
    assert page.evaluate("document.body.dataset.pwned") is None
    page.close()


def test_a_rerun_leaves_an_unchanged_report_alone(finished_run):
    run = RunDir(finished_run)
    path = write_report(run)
    before = path.stat()
    assert write_report(run) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    (finished_run / "rounds" / "002" / "eval.json").write_text(json.dumps({"gold_win_rate": 0.2, "kl": 1.0, "n": 5}))
    write_report(run)
    assert path.stat().st_ino != before.st_ino and "20.0%" in path.read_text()  # changed: replaced atomically


def test_curves_leave_bookkeeping_out_and_label_their_axes():
    from matplotlib.ticker import MaxNLocator

    records = [{"step": s, "time": 1e9 + s, "lr": 1e-3, "entropy": 3 - 0.1 * s, "kl": 0.2 * s, "score": 0.1 * s,
                "epochs_run": 4, "minibatch_steps": 8, "rollout_s": 0.1 * s, "update_tokens_per_s": 100.0 * s,
                "kl_coef": 0.05} for s in range(1, 4)] + [{"step": 3, "val_loss": 2.0}]
    series = metric_series(records)
    order, constant, speed = plot_order(series)
    assert order == ["score", "kl", "entropy"]  # the key metrics first, then the rest by name
    assert constant == {"kl_coef": 0.05, "val_loss": 2.0} and speed == ["rollout_s", "update_tokens_per_s"]
    fig = report_plots.curves_figure("ppo", series, order, "iteration")
    for ax, name in zip(fig.axes, order):
        assert ax.get_xlabel() == "iteration" and ax.get_ylabel() == name
        assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        assert all(float(t).is_integer() for t in ax.get_xticks())
    report_plots.png(fig)


def test_report_of_a_missing_run_is_one_line(tmp_path):
    result = run_cli("report", "--run", str(tmp_path / "nope"))
    assert result.returncode == 2 and result.stderr.strip().startswith("error:")


def test_stages_redone_under_them_are_flagged_stale(finished_run):
    RunDir(finished_run).mark_stage("eval:002", "done")
    RunDir(finished_run).mark_stale(["eval:002", "pretrain"], reason="ppo:002 was redone with --force")
    text = write_report(RunDir(finished_run)).read_text()
    round_two = text[text.index("id='round-002'"):]
    assert "<b>Stale:</b> eval:002 (ppo:002 was redone with --force)" in round_two
    assert "Stale:</b> pretrain" in text[text.index("id='pretrain'"):text.index("id='sft'")]
    assert "Stale" not in text[text.index("id='round-001'"):text.index("id='round-002'")]
