"""`alignloop eval`: win rates, KL to the reference and perplexity before/after, on a tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from alignloop.config.base import load_config
from alignloop.evaluation import statistics
from alignloop.evaluation.config import EvalConfig
from alignloop.evaluation.gold_scope import gold_omission
from alignloop.evaluation.stage import output_folder, run_eval, win_rate
from alignloop.models.causal_lm import load_causal_lm
from alignloop.runs import RunDir
from alignloop.stages import builtin_paths
from alignloop.tokenizer import load_tokenizer
from conftest import run_cli

pytestmark = pytest.mark.usefixtures("single_thread")

# fp32 also on CUDA (auto would mean bf16 there): the tests pin KL and perplexities exactly.
EVAL_ARGS = ["sampling.max_new_tokens=12", "sampling.batch_size=8", "text.seq_len=32", "text.blocks=4", "threads=1",
             "precision=fp32"]
REQUIRED = {"gold_win_rate", "rm_win_rate", "kl", "ppl_before", "ppl_after", "n"}


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 0.0, 0.5, 0.2], [0.0, 1.0, 0.5, 0.1]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError):
        win_rate([], [])


def test_the_baseline_against_itself_ties_everywhere(rl_run, tmp_path):
    """Same model, same seed: identical responses, win rates 1/2 (every resample too), KL 0, the same perplexity.

    The prompts are the user's own (this run has no built-in story task): the gold judge is left out, saying why.
    """
    out = tmp_path / "eval.json"
    style = tmp_path / "style.txt"
    style.write_text("Once upon a time there was a cat.\n\nThe cat was happy.\n")
    result = run_cli("eval", "--run", str(rl_run), "--checkpoint", str(rl_run / "pretrain" / "final"),
                     "--json", str(out), f"prompts.path={rl_run / 'prompts.jsonl'}", f"style.path={style}", *EVAL_ARGS)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["style_win_rate"] == 0.5 and report["style_win_rate_ci"] == [0.5, 0.5]
    assert report["style_score_policy"] == report["style_score_baseline"] < 0 and report["style_corpus"] == str(style)
    assert REQUIRED <= set(report) and report["n"] == 8
    assert report["rm_win_rate"] == 0.5 and report["rm_win_rate_ci"] == [0.5, 0.5]
    # Equal lengths everywhere: the length-controlled fit is sigmoid(logit(1/2)) = 1/2 (up to its 1e-6 ridge).
    assert report["rm_lc_win_rate"] == pytest.approx(0.5, abs=1e-5)
    assert report["gold_win_rate"] is None and report["gold_win_rate_ci"] is None
    assert report["gold_score_policy"] is None
    assert "built-in story task only" in report["gold_omitted"]
    assert "gold_win_rate is left out: the gold judge scores the built-in story task only" in result.stderr
    assert abs(report["kl"]) < 1e-4 and report["kl_se"] < 1e-4
    assert report["bootstrap"]["resamples"] == 1000 and report["bootstrap"]["level"] == 0.95
    assert report["ppl_after"] == pytest.approx(report["ppl_before"], rel=1e-6) and report["ppl_before"] > 1
    assert json.loads(result.stdout.strip().splitlines()[-1])["n"] == 8
    # --json OUT: the results and samples go beside OUT alone, the run directory gets no record.
    assert not (rl_run / "pretrain" / "eval.json").exists() and not (rl_run / "pretrain" / "eval_samples.jsonl").exists()
    rows = [json.loads(line) for line in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["policy_response"] == r["sft_response"] for r in rows)
    assert {"prompt", "sft_response", "policy_response", "rm_sft"} <= set(rows[0]) and "gold_sft" not in rows[0]


def test_a_round_policy_is_evaluated_into_its_round(rl_run, tmp_path):
    """The default checkpoint is the newest round's policy; results go to rounds/NNN/eval.json.

    With samples_per_prompt=2, every prompt is asked twice and its pairs count as one unit."""
    start = rl_run / "pretrain" / "final"
    policy = load_causal_lm(start)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    target = rl_run / "rounds" / "001" / "policy" / "final"
    policy.save_pretrained(str(target))
    load_tokenizer(start).save_pretrained(str(target))

    # The prompts are the built-in task's (the run's own evaluation openings): the gold judge applies.
    builtin = builtin_paths(RunDir(rl_run))["eval_prompts"]
    builtin.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(rl_run / "prompts.jsonl", builtin)
    cfg = load_config(EvalConfig, None, EVAL_ARGS)
    report = run_eval(RunDir(rl_run), cfg, log=lambda message: None)
    saved = json.loads((rl_run / "rounds" / "001" / "eval.json").read_text())
    assert saved == report and REQUIRED <= set(report)
    assert report["policy"] == str(target) and report["gold_omitted"] is None
    for judge in ("gold", "rm"):
        rate, (low, high) = report[f"{judge}_win_rate"], report[f"{judge}_win_rate_ci"]
        assert 0 <= low <= rate <= high <= 1
        low, high = report[f"{judge}_lc_win_rate_ci"]
        assert 0 <= low <= high <= 1 and 0 < report[f"{judge}_lc_win_rate"] < 1
    assert report["kl"] > 0.01  # a different model: the KL estimate is clearly positive
    samples = (rl_run / "rounds" / "001" / "eval_samples.jsonl").read_text().splitlines()
    kls = [json.loads(line)["kl"] for line in samples]
    assert report["kl_se"] == pytest.approx(statistics.standard_error(kls), abs=1e-4)  # rounded to 4 decimals there
    assert report["ppl_after"] != report["ppl_before"]
    lines = (rl_run / "rounds" / "001" / "eval_samples.jsonl").read_text().splitlines()
    assert len(lines) == report["n"]

    # Two samples a prompt: the prompts repeated whole, so the first pass is the one-sample evaluation's.
    twice = run_eval(RunDir(rl_run), load_config(EvalConfig, None, EVAL_ARGS + ["samples_per_prompt=2"]),
                     json_out=tmp_path / "twice.json", log=lambda message: None)
    rows = [json.loads(line) for line in (tmp_path / "twice_samples.jsonl").read_text().splitlines()]
    once = [json.loads(line) for line in samples]
    n = report["n"]
    assert twice["n"] == n and twice["samples_per_prompt"] == 2 and len(rows) == 2 * n
    assert [r["policy_response"] for r in rows[:n]] == [r["policy_response"] for r in once]
    assert [r["prompt"] for r in rows[n:]] == [r["prompt"] for r in once]
    assert [r["sample"] for r in rows] == [0] * n + [1] * n
    # KL: the mean over every sample; its standard error over the prompts' means (rows rounded to 4 decimals).
    kls = [r["kl"] for r in rows]
    assert twice["kl"] == pytest.approx(sum(kls) / len(kls), abs=1e-4)
    means = [(a + b) / 2 for a, b in zip(kls[:n], kls[n:])]
    assert twice["kl_se"] == pytest.approx(statistics.standard_error(means), abs=1e-4)


def test_the_gold_judge_scores_only_the_builtin_task(tmp_path: Path):
    run = RunDir(tmp_path / "run")
    assert "has none" in gold_omission(run, ["Tom went to the park."], "p.jsonl")
    paths = builtin_paths(run)
    paths["eval_prompts"].parent.mkdir(parents=True)
    paths["eval_prompts"].write_text('{"prompt": "Tom went to the park."}\n')
    paths["sft"].write_text('{"prompt": "Mia saw a cat.", "response": "She was happy."}\n')
    assert gold_omission(run, ["Mia saw a cat.", "Tom went to the park."], "p.jsonl") is None
    assert gold_omission(run, ["Tom went to the park.", "What is the capital of France?"], "p.jsonl") == (
        "1 of 2 prompts from p.jsonl are not the built-in story task's; the gold judge scores that task only")


def test_output_folder_follows_the_checkpoint(tmp_path: Path):
    run = RunDir(tmp_path / "run")
    assert output_folder(run, run.root / "rounds" / "002" / "policy" / "final", 2) == run.root / "rounds" / "002"
    assert output_folder(run, run.root / "rounds" / "001" / "grpo" / "final", 1) == \
        run.root / "rounds" / "001" / "grpo"
    assert output_folder(run, tmp_path / "elsewhere" / "model", 1) == run.root / "rounds" / "001" / "eval-model"


def test_eval_without_a_policy_says_what_to_do(pretrained_run):
    result = run_cli("eval", "--run", str(pretrained_run))
    assert result.returncode == 2 and "alignloop ppo" in result.stderr and "Traceback" not in result.stderr
