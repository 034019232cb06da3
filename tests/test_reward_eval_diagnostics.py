"""`alignloop reward eval` reports the accuracy's interval, how it depends on length, and on truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from reward_helpers import tiny_decoder, tiny_encoder, write_jsonl

from alignloop.config.base import load_config
from alignloop.reward.config import RewardEvalConfig
from alignloop.reward.evaluate import reply_was_cut
from alignloop.reward.model import build_reward_model, load_reward_model
from alignloop.reward.stage import run_reward_eval
from alignloop.runs import RunDir
from alignloop.stages import builtin_paths

pytestmark = pytest.mark.usefixtures("single_thread")

MAX_LENGTH = 24
LONG = " ".join(["ball"] * 40) + "."  # far past 24 tokens: read cut


def _pairs() -> list[dict]:
    """12 pairs on 12 prompts: 6 where people chose the shorter reply (the longer one is cut at MAX_LENGTH),
    4 where they chose the longer (both fit), 2 of equal length (both fit)."""
    records = [{"prompt": f"Tom found a ball ({i}).", "chosen": "Tom was happy. The end.", "rejected": LONG}
               for i in range(6)]
    records += [{"prompt": f"Mia saw a cat ({i}).", "chosen": "Mia was kind to the cat. The end.",
                 "rejected": "cat cat."} for i in range(4)]
    records += [{"prompt": f"Ben had a kite ({i}).", "chosen": "Ben was glad.", "rejected": "Kite was red."}
                for i in range(2)]
    assert len(records[10]["chosen"]) == len(records[10]["rejected"])
    return records


def _inside(accuracy: float, interval: list[float]) -> bool:
    """The accuracy is a float32 mean, its interval's ends float64 ones: they may differ by float32's rounding."""
    slack = 4 * float(torch.finfo(torch.float32).eps)
    return 0 <= interval[0] <= accuracy + slack and accuracy - slack <= interval[1] <= 1


@pytest.fixture(scope="module")
def reward_checkpoint(tmp_path_factory) -> Path:
    """An untrained reward model on a tiny decoder: its figures are whatever they are, the splits are not."""
    root = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    build_reward_model(tiny_decoder(root / "backbone"), max_length=MAX_LENGTH).save(root / "reward")
    return root / "reward"


def test_length_and_truncation_diagnostics(reward_checkpoint, tmp_path):
    records = _pairs()
    data = write_jsonl(tmp_path / "prefs.jsonl", records)
    out = tmp_path / "figures.json"
    result = run_cli("reward", "eval", "--run", str(tmp_path / "run"), f"model={reward_checkpoint}",
                     f"data.path={data}", "batch_size=4", "device=cpu", "--json", str(out))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    length = figures["length"]
    assert (length["chosen_shorter"]["n"], length["chosen_longer"]["n"], length["same_length"]["n"]) == (6, 4, 2)
    assert length["longer_wins_accuracy"] == pytest.approx((4 + 0.5 * 2) / 12, abs=1e-12)
    assert figures["truncation"]["max_length"] == MAX_LENGTH
    assert figures["truncation"]["cut"]["n"] == 6 and figures["truncation"]["whole"]["n"] == 6
    assert _inside(figures["accuracy"], figures["accuracy_ci"])
    assert figures["bootstrap"]["resamples"] == 1000
    assert -1 <= length["reward_length_spearman"] <= 1
    assert "the shorter" in result.stderr and "cut at max_length" in result.stderr
    assert "no agreement with the gold judge: the gold judge scores the built-in story task only" in result.stderr

    # The same pairs scored one by one: every split's accuracy is the share of pairs the model orders right
    # (scoring in batches of 4 groups, sorted by length, must give each group its own responses' rewards).
    reward = load_reward_model(reward_checkpoint, device="cpu")
    prompts = [r["prompt"] for r in records]
    chosen = reward.score_texts(prompts, [r["chosen"] for r in records], batch_size=1)
    rejected = reward.score_texts(prompts, [r["rejected"] for r in records], batch_size=1)
    right = ((chosen > rejected).double() + 0.5 * (chosen == rejected).double()).tolist()
    tolerance = 1e-12  # shares of at most 12 halves: exact in floating point
    assert figures["accuracy"] == pytest.approx(sum(right) / 12, abs=tolerance)
    assert length["chosen_shorter"]["accuracy"] == pytest.approx(sum(right[:6]) / 6, abs=tolerance)
    assert length["chosen_longer"]["accuracy"] == pytest.approx(sum(right[6:10]) / 4, abs=tolerance)
    assert figures["truncation"]["cut"]["accuracy"] == pytest.approx(sum(right[:6]) / 6, abs=tolerance)


def test_a_reply_read_whole_is_told_from_one_cut(tmp_path):
    """Decoders keep a cut reply's start and EOS, encoders its start: either way the whole reply is missing."""
    torch.manual_seed(0)
    for backbone in (tiny_decoder(tmp_path / "decoder"), tiny_encoder(tmp_path / "encoder")):
        reward = build_reward_model(backbone, max_length=MAX_LENGTH)
        for reply, cut in (("Tom was happy. The end.", False), (LONG, True)):
            encoded = reward.encode("Tom found a ball.", reply)["input_ids"]
            assert reply_was_cut(reward, "Tom found a ball.", reply, encoded) is cut, (backbone.name, reply)


def test_gold_agreement_only_on_the_builtin_task(reward_checkpoint, tmp_path):
    run = RunDir(tmp_path / "run").ensure()
    openings = ["Tom went to the park.", "Mia saw a cat."]
    builtin = builtin_paths(run)["eval_prompts"]
    builtin.parent.mkdir(parents=True)
    write_jsonl(builtin, [{"prompt": p} for p in openings])
    good = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": p, "a": "He was kind and happy. The end.", "b": f"{word} {word} {word} {word}"}
        for p in openings for word in ("ball", "kite", "cat")])
    cfg = load_config(RewardEvalConfig, None, [f"model={reward_checkpoint}", f"gold.pairs_file={good}",
                                               "device=cpu"])
    figures = run_reward_eval(run, cfg, log=lambda message: None)
    gold = figures["gold"]
    assert figures["gold_omitted"] is None and gold["n"] + gold["gold_ties_skipped"] == 6
    assert _inside(gold["accuracy"], gold["accuracy_ci"])
    assert gold["truncation"]["cut"]["n"] == 0 and "chosen_shorter" in gold["length"]

    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "How do I bake bread?", "a": "Knead it.", "b": "No."}])
    messages: list[str] = []
    cfg = load_config(RewardEvalConfig, None, [f"model={reward_checkpoint}", f"gold.pairs_file={other}",
                                               "device=cpu"])
    with pytest.raises(Exception, match="nothing to evaluate on.*not the built-in story task's"):
        run_reward_eval(run, cfg, log=messages.append)
    assert any("no agreement with the gold judge: 1 of 1 prompts" in m for m in messages)
