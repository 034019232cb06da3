"""`alignloop report` writes a self-contained report.html; rendered in headless Chromium it shows plots and tables."""

import json
from pathlib import Path

import pytest

from alignloop.feedback import open_store
from conftest import run_cli

XSS = '<script>document.title="pwned"</script><img src=x onerror="document.body.dataset.pwned=1">'


def _write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """The artifacts a two-round run leaves behind, written directly."""
    run = tmp_path / "run"
    (run).mkdir()
    (run / "run.yaml").write_text("pretrain:\n  model:\n    preset: tiny\n")
    _write_jsonl(run / "pretrain" / "metrics.jsonl",
                 [{"step": s, "loss": 5.0 / s, "val_loss": 5.5 / s, "val_perplexity": 9.0 / s} for s in range(1, 6)])
    for number, win in ((1, 0.6), (2, 0.7)):
        folder = run / "rounds" / f"{number:03d}"
        _write_jsonl(folder / "ppo" / "metrics.jsonl",
                     [{"step": s, "score": 0.1 * s, "kl": 0.2 * s, "entropy": 3 - 0.1 * s} for s in range(1, 5)])
        (folder / "eval.json").write_text(json.dumps(
            {"gold_win_rate": win, "rm_win_rate": win + 0.1, "kl": number * 1.5, "ppl_before": 4.0,
             "ppl_after": 4.1, "n": 50}))
        _write_jsonl(folder / "eval_samples.jsonl",
                     [{"prompt": "Tom had a ball.", "sft_response": XSS, "policy_response": "Tom shared it. The end."}])
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
    assert images.count() == 4  # win rate per round, pretrain curves, the curves of each round's PPO
    loaded = page.evaluate("Array.from(document.querySelectorAll('img.plot')).every(i => i.naturalWidth > 100)")
    assert loaded
    rows = page.locator("#rounds ~ table.figures tr")
    assert rows.count() >= 3  # header + two rounds
    assert "0.700" in page.locator("table.figures").first.inner_text()
    sample_text = page.locator("table.samples").first.inner_text()
    assert "document.title" in sample_text  # shown as text
    assert page.title() == "alignloop report"
    assert page.evaluate("document.body.dataset.pwned") is None
    page.close()


def test_report_of_a_missing_run_is_one_line(tmp_path):
    result = run_cli("report", "--run", str(tmp_path / "nope"))
    assert result.returncode == 2 and result.stderr.strip().startswith("error:")
