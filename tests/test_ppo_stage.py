"""`alignloop ppo` end to end on a tiny run: outputs, logged metrics, skip when done, exact resume after kill -9."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config.base import load_config
from alignloop.rl.config import PPOConfig
from alignloop.rl.ppo import run_ppo
from alignloop.runs import RunDir
from conftest import TINY_RL, run_cli

pytestmark = pytest.mark.usefixtures("single_thread")

# fp32 also on CUDA (auto would mean bf16 there): ratio = 1 within 1e-5 and exact resumes are fp32 claims.
PPO_ARGS = ["ppo.iterations=3", "ppo.rollout_prompts=8", "ppo.epochs=2", "ppo.minibatches=2", "run.save_every=1",
            "run.precision=fp32"]
LOGGED = ["score", "reward", "kl", "kl_coef", "entropy", "clipfrac", "approx_kl", "policy_loss", "value_loss",
          "explained_variance", "response_length", "rollout_tokens_per_s", "update_tokens_per_s", "ratio_dev",
          "reward_clip_frac", "value_error_last_token"]


def ppo(run: Path, env: dict[str, str] | None = None):
    return run_cli("ppo", "--run", str(run), f"prompts.path={run / 'prompts.jsonl'}", *PPO_ARGS, *TINY_RL, env=env)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ppo_trains_logs_skips_and_resumes_exactly(rl_run, tmp_path):
    """In-process run, then the same run through the CLI killed after iteration 2 and rerun."""
    import shutil

    crashed = tmp_path / "crashed"
    shutil.copytree(rl_run, crashed)

    cfg = load_config(PPOConfig, None, [f"prompts.path={rl_run / 'prompts.jsonl'}", *PPO_ARGS, *TINY_RL])
    said = []
    assert run_ppo(RunDir(rl_run), cfg, log=said.append).iterations == 3
    # The template's reward_stats.json comes from 10 responses: PPO says its normalisation is rough.
    assert any("ppo: warning:" in line and "comes from 10 responses (fewer than 200)" in line for line in said)
    final = rl_run / "rounds" / "001" / "policy" / "final"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(final)) is not None
    metrics = records(rl_run / "rounds" / "001" / "ppo" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in LOGGED:
        assert all(m[key] is not None for m in metrics), key
    assert abs(metrics[0]["kl"]) < 1e-4 and metrics[0]["ratio_dev"] < 1e-5  # nothing has moved yet
    assert metrics[-1]["kl"] != 0  # ... and then it has
    samples = records(rl_run / "rounds" / "001" / "ppo" / "samples.jsonl")
    assert len(samples) == 6 and {"prompt", "response", "score", "kl"} <= set(samples[0])
    manifest = json.loads((rl_run / "manifest.json").read_text())
    assert manifest["stages"]["ppo:001"]["status"] == "done"

    said = []
    assert run_ppo(RunDir(rl_run), cfg, log=said.append) is None and "nothing to do" in said[-1]

    # Killed right after the checkpoint of iteration 2, then rerun: the same run as without the kill.
    killed = ppo(crashed, env={"ALIGNLOOP_CRASH_AT": "ppo:saved:2"})
    assert killed.returncode == -9
    assert not (crashed / "rounds" / "001" / "policy" / "final").exists()
    resumed = ppo(crashed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming round 1 from iteration 2" in resumed.stderr
    resumed_metrics = records(crashed / "rounds" / "001" / "ppo" / "metrics.jsonl")
    assert [m["step"] for m in resumed_metrics] == [1, 2, 3]
    for key in ("score", "kl", "policy_loss", "value_loss", "kl_coef"):
        assert resumed_metrics[2][key] == metrics[2][key], key
    weights = load_file(str(final / "model.safetensors"))
    resumed_weights = load_file(str(crashed / "rounds" / "001" / "policy" / "final" / "model.safetensors"))
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)


def test_ppo_reports_a_missing_reward_model_in_one_line(pretrained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    result = run_cli("ppo", "--run", str(run), "ppo.iterations=1")
    assert result.returncode == 2
    assert "no reward model at" in result.stderr and "Traceback" not in result.stderr
