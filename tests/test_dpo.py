"""DPO on preference pairs in TRL's JSONL format: log 2 at the start, then it learns the preference."""

from __future__ import annotations

import json
import math

import pytest

from alignloop.config.base import load_config
from alignloop.errors import DataError
from alignloop.rl.config import DPOConfig
from alignloop.rl.dpo import batch_rows, run_dpo
from alignloop.runs import RunDir

pytestmark = pytest.mark.usefixtures("single_thread")

PAIRS = [
    ("Tom went to the park.", "Tom saw a dog. Tom was happy. The end.", "Tom hit the dog. The dog was sad."),
    ("Mia saw a cat.", "The cat was very nice. Mia was happy. The end.", "Mia was mean to the cat."),
    ("Ben went to the beach.", "Ben saw a boat. Ben was happy. The end.", "Ben was sad. Ben"),
    ("Lily saw a kite.", "The kite was very nice. The end.", "Lily broke the kite. Lily was mean."),
    ("Sam went to the town.", "Sam saw a cake. Sam was happy. The end.", "Sam was sad and angry."),
]


def write_pairs(path):
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    return path


def test_dpo_starts_at_log_two_and_learns_the_preference(rl_run):
    data = write_pairs(rl_run / "pairs.jsonl")
    cfg = load_config(DPOConfig, None, [f"data.path={data}", "data.val_fraction=0.2", "dpo.batch_size=4",
                                        "dpo.grad_accum=2", "dpo.epochs=6", "dpo.lr=0.003", "dpo.warmup_steps=0",
                                        "run.log_every=1", "run.threads=1"])
    final = run_dpo(RunDir(rl_run), cfg, log=lambda message: None)
    assert final == rl_run / "rounds" / "001" / "dpo" / "final" and (final / "model.safetensors").exists()
    metrics = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    # Before the first update the policy is the reference: every implicit reward is 0 and the loss is log 2.
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert metrics[0]["reward_accuracy"] == 0.5  # every pair a tie: each counts one half
    assert metrics[-1]["loss"] < metrics[0]["loss"] and metrics[-1]["reward_accuracy"] == 1.0
    assert "val_reward_accuracy" in metrics[-1]


def test_dpo_batches_cover_each_pair_once_per_epoch():
    seen = [i for step in range(5) for i in batch_rows(step, 2, 5, seed=0)]
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:10]) == list(range(5))


def test_dpo_without_feedback_says_where_it_looked(rl_run):
    cfg = load_config(DPOConfig, None, [])
    with pytest.raises(DataError, match="feedback.db does not exist"):
        run_dpo(RunDir(rl_run), cfg, log=lambda message: None)


def test_dpo_reads_hh_transcripts_as_reward_does(rl_run):
    from alignloop.rl.dpo import read_preference_pairs

    hh = rl_run / "hh.jsonl"
    same = "\n\nHuman: x\n\nAssistant: same"
    hh.write_text("".join(json.dumps({"chosen": f"\n\nHuman: {p}\n\nAssistant: {c}",
                                      "rejected": f"\n\nHuman: {p}\n\nAssistant: {r}"}) + "\n" for p, c, r in PAIRS)
                  + json.dumps({"chosen": same, "rejected": same}) + "\n")
    messages = []
    cfg = load_config(DPOConfig, None, [f"data.path={hh}", "data.val_fraction=0.2", "dpo.batch_size=4",
                                        "dpo.epochs=1", "run.threads=1"])
    pairs, _ = read_preference_pairs(RunDir(rl_run), cfg.data, messages.append)
    assert pairs == [(f"\n\nHuman: {p}\n\nAssistant:", c, r) for p, c, r in PAIRS]
    assert messages == [f"dpo: skipped 1 record of {hh}: 1 chosen identical to rejected (line 6)"]
    final = run_dpo(RunDir(rl_run), cfg, log=lambda message: None)
    assert (final / "model.safetensors").exists()
    (rl_run / "bad.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl line 1: .*no 'rejected'"):
        read_preference_pairs(RunDir(rl_run), load_config(DPOConfig, None, [f"data.path={rl_run / 'bad.jsonl'}"]).data)
