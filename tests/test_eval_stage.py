"""`alignloop eval`: win rates, KL to the reference and perplexity before/after, on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignloop.config.base import load_config
from alignloop.evaluation.config import EvalConfig
from alignloop.evaluation.stage import output_folder, run_eval, win_rate
from alignloop.models.causal_lm import load_causal_lm
from alignloop.runs import RunDir
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
    """Same model, same seed: identical responses, win rates 1/2, KL 0, the same perplexity."""
    out = tmp_path / "eval.json"
    result = run_cli("eval", "--run", str(rl_run), "--checkpoint", str(rl_run / "pretrain" / "final"),
                     "--json", str(out), f"prompts.path={rl_run / 'prompts.jsonl'}", *EVAL_ARGS)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert REQUIRED <= set(report) and report["n"] == 8
    assert report["gold_win_rate"] == 0.5 and report["rm_win_rate"] == 0.5
    assert abs(report["kl"]) < 1e-4
    assert report["ppl_after"] == pytest.approx(report["ppl_before"], rel=1e-6) and report["ppl_before"] > 1
    assert json.loads(result.stdout.strip().splitlines()[-1])["n"] == 8
    # --json OUT: the results and samples go beside OUT alone, the run directory gets no record.
    assert not (rl_run / "pretrain" / "eval.json").exists() and not (rl_run / "pretrain" / "eval_samples.jsonl").exists()
    rows = [json.loads(line) for line in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["policy_response"] == r["sft_response"] for r in rows)
    assert {"prompt", "sft_response", "policy_response"} <= set(rows[0])


def test_a_round_policy_is_evaluated_into_its_round(rl_run):
    """The default checkpoint is the newest round's policy; results go to rounds/NNN/eval.json."""
    start = rl_run / "pretrain" / "final"
    policy = load_causal_lm(start)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    target = rl_run / "rounds" / "001" / "policy" / "final"
    policy.save_pretrained(str(target))
    load_tokenizer(start).save_pretrained(str(target))

    cfg = load_config(EvalConfig, None, [f"prompts.path={rl_run / 'prompts.jsonl'}", *EVAL_ARGS])
    report = run_eval(RunDir(rl_run), cfg, log=lambda message: None)
    saved = json.loads((rl_run / "rounds" / "001" / "eval.json").read_text())
    assert saved == report and REQUIRED <= set(report)
    assert report["policy"] == str(target)
    assert 0 <= report["gold_win_rate"] <= 1 and 0 <= report["rm_win_rate"] <= 1
    assert report["kl"] > 0.01  # a different model: the KL estimate is clearly positive
    assert report["ppl_after"] != report["ppl_before"]
    lines = (rl_run / "rounds" / "001" / "eval_samples.jsonl").read_text().splitlines()
    assert len(lines) == report["n"]


def test_output_folder_follows_the_checkpoint(tmp_path: Path):
    run = RunDir(tmp_path / "run")
    assert output_folder(run, run.root / "rounds" / "002" / "policy" / "final", 2) == run.root / "rounds" / "002"
    assert output_folder(run, run.root / "rounds" / "001" / "grpo" / "final", 1) == \
        run.root / "rounds" / "001" / "grpo"
    assert output_folder(run, tmp_path / "elsewhere" / "model", 1) == run.root / "rounds" / "001" / "eval-model"


def test_eval_without_a_policy_says_what_to_do(pretrained_run):
    result = run_cli("eval", "--run", str(pretrained_run))
    assert result.returncode == 2 and "alignloop ppo" in result.stderr and "Traceback" not in result.stderr
