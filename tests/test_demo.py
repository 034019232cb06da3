"""`alignloop demo --fast`: every stage of the demo, wired end to end, on a tiny model."""

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_fast_demo_runs_every_stage_and_writes_the_report(tmp_path):
    run = tmp_path / "demo"
    result = run_cli("demo", "--run", str(run), "--fast", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for number in (1, 2, 3):
        evaluation = json.loads((run / "rounds" / f"{number:03d}" / "eval.json").read_text())
        assert {"gold_win_rate", "rm_win_rate", "kl", "ppl_before", "ppl_after", "n"} <= set(evaluation)
        assert evaluation["samples_per_prompt"] == 4 and evaluation["n"] == 8  # 8 prompts, 4 answers to each
        samples = (run / "rounds" / f"{number:03d}" / "eval_samples.jsonl").read_text().splitlines()
        assert {"prompt", "sft_response", "policy_response"} <= set(json.loads(samples[0]))
    assert (run / "report.html").exists()
    assert "gold win rate" in result.stderr and str(run / "report.html") in result.stderr
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(stages[key]["status"] == "done" for key in
               ("pretrain", "sft", "sample:003", "feedback:003", "reward:003", "ppo:003", "eval:003"))
    # Each round's PPO is leashed to SFT with a KL target that grows by round, decays its learning rate to a
    # tenth so the KL settles, and mixes in pretraining text (PPO-ptx); the evaluation measures against SFT too.
    assert "round 2: [4/5] ppo from {}, reference {}".format(
        run / "rounds" / "001" / "policy" / "final", run / "sft" / "final") in result.stderr
    assert [stages[f"ppo:{n:03d}"]["config"]["reward.kl_target"] for n in (1, 2, 3)] == [1.4, 3.5, 6.0]
    assert all(stages[f"ppo:{n:03d}"]["config"]["ppo.min_lr_ratio"] == 0.1 for n in (1, 2, 3))
    ptx = [json.loads(line).get("ptx_loss") for line in
           (run / "rounds" / "003" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert ptx and all(value > 0 for value in ptx)
    assert json.loads((run / "rounds" / "003" / "eval.json").read_text())["baseline"] == str(run / "sft" / "final")

    # A run directory from an older demo (round 3's PPO recorded with another KL target) stops at that step
    # with one line and keeps what it made; `--force` redoes that step and nothing before it.
    manifest = run / "manifest.json"
    record = json.loads(manifest.read_text())
    record["stages"]["ppo:003"]["config"]["reward.kl_target"] = 5.0
    record["stages"]["ppo:003"]["inputs"]["config"] = "0" * 16
    manifest.write_text(json.dumps(record))
    policy = run / "rounds" / "003" / "policy" / "final" / "model.safetensors"
    before = policy.read_bytes()
    refused = run_cli("demo", "--run", str(run), "--fast", timeout=900)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "ppo:003" in refused.stderr and "reward.kl_target: 5.0 -> 6.0. Rerun with --force" in refused.stderr
    assert policy.read_bytes() == before
    forced = run_cli("demo", "--run", str(run), "--fast", "--force", timeout=900)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "ppo:003: --force: replacing work made from other inputs (reward.kl_target: 5.0 -> 6.0)" in forced.stderr
    assert forced.stderr.count("--force: replacing") == 1
    assert "pretrain: already finished" in forced.stderr and "ppo: round 2 already finished" in forced.stderr
    redone = json.loads(manifest.read_text())["stages"]["ppo:003"]
    assert redone["status"] == "done" and redone["config"]["reward.kl_target"] == 6.0
    assert redone["inputs"]["config"] != "0" * 16
