"""`alignloop reward` end to end: CLI train + eval --json, bad input, exact resume, store, gold, ensembles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from reward_helpers import good_bad_pairs, tiny_decoder, tiny_encoder, write_jsonl
from safetensors.torch import load_file

from alignloop.config.base import load_config
from alignloop.errors import DataError
from alignloop.reward.config import RewardConfig, RewardEvalConfig
from alignloop.reward.ensemble import load_ensemble, most_uncertain
from alignloop.provenance import StageInputsChanged
from alignloop.reward.stage import run_reward, run_reward_eval
from alignloop.runs import RunDir

FAST = ["train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=2", "train.eval_every=4", "train.save_every=4",
        "train.log_every=2", "train.threads=1", "train.patience=0", "model.max_length=48"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return tiny_decoder(tmp_path_factory.mktemp("backbone"))


@pytest.fixture(scope="module")
def prefs_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("prefs") / "prefs.jsonl", good_bad_pairs(96))


def _quiet(_: str) -> None:
    pass


def test_cli_train_then_eval_json_with_skipped_records(backbone, tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in good_bad_pairs(64)).encode()
    bad = (b'{"prompt": "x", "chosen": "same", "rejected": "same"}\n{"prompt": "x", "chosen": "", "rejected": "y"}\n'
           b'{"prompt": "x", "chosen": "z", "rejected": ""}\n')
    path.write_bytes(good + bad)
    run = tmp_path / "run"
    trained = run_cli("reward", "--run", str(run), f"data.path={path}", f"model.path={backbone}",
                      "train.epochs=3", *FAST, "train.warmup_steps=50")
    assert trained.returncode == 0, trained.stderr
    assert "skipped 3 records" in trained.stderr and "Traceback" not in trained.stderr
    # a long run's warmup on a ~20-step run: capped at a fifth, and said so
    assert re.search(r"reward: warmup of [1-5] steps instead of train.warmup_steps=50", trained.stderr)
    final = run / "rounds" / "001" / "reward" / "final"
    assert (final / "config.json").exists() and (final / "model.safetensors").exists()
    stats = json.loads((final / "reward_stats.json").read_text())
    assert stats["n"] > 0 and stats["std"] > 0
    metrics = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in m for m in metrics) and any("pairs_per_s" in m for m in metrics)

    out = tmp_path / "eval.json"
    evaluated = run_cli("reward", "eval", "--run", str(run), f"data.path={path}", "--json", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads(out.read_text())
    assert {"accuracy", "loss", "ece", "n", "accuracy_by_margin"} <= set(figures)
    assert figures["n"] == 64 and figures["skipped"]["chosen identical to rejected"] == 1
    assert figures["accuracy"] > 0.9  # an easy task: happy endings beat repetition
    assert 0 <= figures["ece"] <= 1


def test_only_bad_input_is_one_line_exit_2(backbone, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "p", "chosen": "", "rejected": "b"}\n'
                     b'{"prompt": "p", "chosen": "c", "rejected": "c"}\n')
    result = run_cli("reward", "--run", str(tmp_path / "run"), f"data.path={path}", f"model.path={backbone}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no usable preference records" in result.stderr and "identical to rejected (line 2)" in result.stderr
    path.write_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n\xff\xfe\n')
    result = run_cli("reward", "--run", str(tmp_path / "run"), f"data.path={path}", f"model.path={backbone}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bad.jsonl line 2: not UTF-8" in result.stderr


def test_crash_and_resume_is_exact(backbone, prefs_file, tmp_path):
    args = [f"data.path={prefs_file}", f"model.path={backbone}", "train.epochs=2", *FAST]
    crashed = run_cli("reward", "--run", str(tmp_path / "resumed"), *args, env={"ALIGNLOOP_CRASH_AT": "reward:saved:8"})
    assert crashed.returncode != 0
    stage = tmp_path / "resumed" / "rounds" / "001" / "reward"
    assert (stage / "checkpoints" / "step-000008").exists() and not (stage / "final").exists()
    resumed = run_cli("reward", "--run", str(tmp_path / "resumed"), *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 8" in resumed.stderr

    run_reward(RunDir(tmp_path / "straight"), load_config(RewardConfig, None, args), log=_quiet)
    one = load_file(str(stage / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "straight" / "rounds" / "001" / "reward" / "final" / "model.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-6), key
    steps = [json.loads(line)["step"] for line in (stage / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == sorted(set(steps))  # the metrics log was cut back to the checkpoint, not duplicated


def test_encoder_backbone_trains(tmp_path, prefs_file):
    encoder = tiny_encoder(tmp_path / "encoder")
    cfg = load_config(RewardConfig, None, [f"data.path={prefs_file}", f"model.path={encoder}", "train.epochs=4",
                                           *FAST])
    result = run_reward(RunDir(tmp_path / "run"), cfg, log=_quiet)
    assert result is not None and result.val_accuracy >= 0.9


def test_store_rounds_gold_eval_and_ensemble(backbone, tmp_path):
    from alignloop.feedback import open_store
    from alignloop.stages import builtin_paths

    run = RunDir(tmp_path / "run").ensure()
    records = good_bad_pairs(64)
    with open_store(run.feedback_db) as store:
        first = store.create_round()
        second = store.create_round()
        store.import_preferences(records[:40], source="trl", round_id=first)
        # Round 2 holds the opposite labels: only round 1 must be read.
        flipped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in records[40:]]
        store.import_preferences(flipped, source="trl", round_id=second)
    cfg = load_config(RewardConfig, None, [f"model.path={backbone}", "data.rounds=[1]", "train.epochs=4",
                                           "ensemble.heads=2", "ensemble.models=2", *FAST])
    result = run_reward(run, cfg, log=_quiet)
    assert result is not None
    reward_dir = run.round_dir(2) / "reward"  # the newest round in the store
    assert (reward_dir / "final").exists() and (reward_dir / "ensemble" / "member-02" / "final").exists()
    assert run_reward(run, cfg, log=_quiet) is None  # finished: nothing to do
    # Each head on its own scale, and the spread of the validation responses (two heads; four estimates in all).
    stats = json.loads((reward_dir / "final" / "reward_stats.json").read_text())
    assert len(stats["head_mean"]) == len(stats["head_std"]) == 2 and min(stats["head_std"]) > 0
    assert stats["spread_q95"] > 0 and stats["ensemble_spread_q95"] > 0 and stats["ensemble_estimates"] == 4
    member_stats = json.loads((reward_dir / "ensemble" / "member-02" / "final" / "reward_stats.json").read_text())
    assert len(member_stats["head_mean"]) == 2 and "ensemble_spread_q95" not in member_stats

    prompts = builtin_paths(run)["eval_prompts"]
    prompts.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(prompts, [{"prompt": r["prompt"]} for r in records[:4]])
    eval_cfg = load_config(RewardEvalConfig, None, ["gold.pairs=6", f"gold.policy={backbone}",
                                                    "gold.max_new_tokens=8", "device=cpu"])
    figures = run_reward_eval(run, eval_cfg, log=_quiet)
    assert figures["split"] == "val" and figures["n"] >= 1
    assert "gold" in figures and figures["gold"]["n"] + figures["gold"]["gold_ties_skipped"] == 6
    assert (reward_dir / "eval.json").exists()
    assert figures["gold_ensemble"]["n"] == figures["gold"]["n"]  # two models: the ensemble is scored too
    # ... and on the people's pairs, as RL scores it: every head of both models, each on its own scale.
    assert figures["ensemble_estimates"] == {"models": 2, "estimates": 4}
    assert figures["ensemble"]["n"] == figures["n"] and "length" in figures["ensemble"]
    # The sampled pairs are kept, and judging them again from the file gives the same figures.
    pairs_file = reward_dir / "gold_pairs.jsonl"
    assert len(pairs_file.read_text().splitlines()) == 6
    from_file = load_config(RewardEvalConfig, None, [f"gold.pairs_file={pairs_file}", "device=cpu"])
    record = (reward_dir / "eval.json").read_bytes()
    # Other settings never replace the round's record unasked; figures of their own leave it as it is.
    with pytest.raises(StageInputsChanged, match=r"gold.pairs: 6 -> 500.*--force.*--json OUT"):
        run_reward_eval(run, from_file, log=_quiet)
    again = run_reward_eval(run, from_file, log=_quiet, keep_record=False)
    assert again["gold"] == figures["gold"] and again["gold_ensemble"] == figures["gold_ensemble"]
    assert (reward_dir / "eval.json").read_bytes() == record
    assert run_reward_eval(run, eval_cfg, log=_quiet) == figures  # the same settings: the record, not a rerun
    bad = tmp_path / "bad_pairs.jsonl"
    bad.write_text('{"prompt": "p", "a": "x"}\n')
    with pytest.raises(DataError, match="bad_pairs.jsonl:1: a gold pair needs"):
        run_reward_eval(run, load_config(RewardEvalConfig, None, [f"gold.pairs_file={bad}", "device=cpu"]),
                        log=_quiet, keep_record=False)

    ensemble = load_ensemble(reward_dir, device="cpu")
    assert ensemble.size == 4
    # The ensemble's reward by hand: each member's raw heads, less that head's mean, over its std, averaged.
    texts = ([r["prompt"] for r in records[:5]], [r["chosen"] for r in records[:5]])
    by_hand = []
    folders = [reward_dir / "final", reward_dir / "ensemble" / "member-02" / "final"]
    for member, folder in zip(ensemble.members, folders):
        member_stats = json.loads((folder / "reward_stats.json").read_text())
        by_hand.append((member.score_texts(*texts, all_heads=True) - torch.tensor(member_stats["head_mean"]))
                       / torch.tensor(member_stats["head_std"]))
    expected = torch.cat(by_hand, dim=1).mean(dim=1)
    assert torch.allclose(ensemble.mean_scores(*texts), expected, rtol=1e-5, atol=1e-5)
    # One padded batch (the evaluation's reading) against score_texts' length-sorted batches: float32 sums in
    # another order and over other padding.
    batch = ensemble.reader.collate([ensemble.encode(p, r) for p, r in zip(*texts)])
    with torch.no_grad():
        assert torch.allclose(ensemble(**batch), expected, rtol=1e-4, atol=1e-4)
    probabilities = ensemble.preference_probabilities([r["prompt"] for r in records[:5]],
                                                      [r["chosen"] for r in records[:5]],
                                                      [r["rejected"] for r in records[:5]])
    assert probabilities.shape == (5, 4)
    order = most_uncertain(probabilities, 3)
    spread = probabilities.std(dim=1, unbiased=False)
    assert spread[order[0]] == spread.max() and len(order) == 3


def test_selection_on_validation_loss_keeps_the_lowest_loss_step(backbone, prefs_file, tmp_path):
    cfg = load_config(RewardConfig, None, [f"data.path={prefs_file}", f"model.path={backbone}", "train.epochs=3",
                                           "train.select=loss", *FAST])
    result = run_reward(RunDir(tmp_path / "run"), cfg, log=_quiet)
    metrics = [json.loads(line) for line in
               (tmp_path / "run" / "rounds" / "001" / "reward" / "metrics.jsonl").read_text().splitlines()]
    validations = [(m["val_loss"], m["step"]) for m in metrics if "val_loss" in m]
    assert len(validations) >= 3
    lowest_loss_step = min(validations)[1]
    assert result is not None and result.best_step == lowest_loss_step
    accuracy_at = {m["step"]: m["val_accuracy"] for m in metrics if "val_loss" in m}
    assert result.val_accuracy == pytest.approx(accuracy_at[lowest_loss_step])
