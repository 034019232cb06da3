"""PPO-ptx: the pretraining split it reads, the batches it draws, and that its loss really trains the policy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from alignloop.config.base import load_config
from alignloop.data.corpus import read_corpus
from alignloop.errors import DataError
from alignloop.evaluation.perplexity import pretraining_split
from alignloop.models.causal_lm import load_causal_lm
from alignloop.rl.config import PPOConfig
from alignloop.rl.ppo import run_ppo
from alignloop.runs import RunDir
from alignloop.train.ptx import PretrainMix, lm_loss
from conftest import TINY_RL, run_cli

pytestmark = pytest.mark.usefixtures("single_thread")

# A high learning rate and a dominant ptx weight, so that a few steps move the policy measurably.
ARGS = ["ppo.iterations=2", "ppo.rollout_prompts=4", "ppo.epochs=1", "ppo.minibatches=2", "ppo.lr=1e-3",
        "run.precision=fp32", "run.sample_table_every=0", *TINY_RL]
TEXT = "The cat sat on the red mat and looked at the moon."


def test_pretraining_split_sides_are_disjoint_and_make_up_the_corpus(pretrained_run):
    run = RunDir(pretrained_run)
    train, train_source = pretraining_split(run, "train")
    validation, validation_source = pretraining_split(run, "validation")
    corpus_path = run.read_configs()["pretrain"]["data"]["path"]
    assert Counter(train) + Counter(validation) == Counter(read_corpus(Path(corpus_path)))
    assert train and validation and len(validation) < len(train)
    assert "train split" in train_source and "validation split" in validation_source


def test_mix_draws_reproducible_batches_of_whole_blocks():
    blocks = torch.arange(40).view(10, 4)
    mix = PretrainMix(blocks, batch_size=3, source="test")
    torch.manual_seed(5)
    first = mix.batch()
    torch.manual_seed(5)
    assert torch.equal(first, mix.batch())  # the global generator PPO checkpoints save and restore
    assert first.shape == (3, 4) and all(int(row[0]) % 4 == 0 for row in first)
    with pytest.raises(DataError, match="holds no block"):
        PretrainMix(torch.zeros((0, 4), dtype=torch.long), 2, "empty.txt")


def _policy_loss_on(run: Path, text_file: Path) -> float:
    from alignloop.tokenizer import load_tokenizer

    final = run / "rounds" / "001" / "policy" / "final"
    model, tokenizer = load_causal_lm(final).eval(), load_tokenizer(final)
    ids = torch.tensor([tokenizer(TEXT * 3, add_special_tokens=False)["input_ids"][:48]])
    with torch.no_grad():
        return float(lm_loss(model, ids))


def test_ptx_loss_pulls_the_policy_towards_its_text(rl_run, tmp_path):
    import shutil

    text = tmp_path / "mix.txt"
    text.write_text("\n\n".join([TEXT * 4] * 50))
    plain = tmp_path / "plain"
    shutil.copytree(rl_run, plain)
    prompts = f"prompts.path={rl_run / 'prompts.jsonl'}"

    said: list[str] = []
    cfg = load_config(PPOConfig, None, [prompts, *ARGS, "ptx.coef=20", f"ptx.path={text}", "ptx.seq_len=16",
                                        "ptx.batch_size=4"])
    run_ppo(RunDir(rl_run), cfg, log=said.append)
    assert any(line.startswith("ptx: ") and "blocks of 16 tokens" in line for line in said)
    import json

    metrics = [json.loads(line) for line in (rl_run / "rounds" / "001" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["ptx_loss"] > 0 for m in metrics)

    run_ppo(RunDir(plain), load_config(PPOConfig, None, [prompts, *ARGS]), log=lambda m: None)
    assert "ptx_loss" not in (plain / "rounds" / "001" / "ppo" / "metrics.jsonl").read_text()
    # The same PPO with the text's loss mixed in models the text better than without it.
    assert _policy_loss_on(rl_run, text) < _policy_loss_on(plain, text) - 0.1


def test_missing_ptx_corpus_is_one_line(rl_run):
    result = run_cli("ppo", "--run", str(rl_run), f"prompts.path={rl_run / 'prompts.jsonl'}", "ppo.iterations=1",
                     "ptx.coef=0.5", "ptx.path=/nonexistent/corpus.txt", *TINY_RL)
    assert result.returncode == 2
    assert "ptx.path /nonexistent/corpus.txt does not exist" in result.stderr and "Traceback" not in result.stderr


def test_mix_backward_adds_the_weighted_text_loss_and_refuses_nan():
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignloop.errors import TrainingError
    from alignloop.train.ptx import mix_backward

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    mix = PretrainMix(torch.randint(0, 50, (6, 8)), batch_size=2, source="test")
    torch.manual_seed(3)
    loss = mix_backward(model, mix, 0.25, torch.device("cpu"), "sft step 1")
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(3)  # the same blocks, by hand
    expected = lm_loss(model, mix.batch())
    expected.backward()
    assert loss == pytest.approx(float(expected.detach()), rel=1e-6)
    for got, full in zip(accumulated, (p.grad for p in model.parameters())):
        assert torch.allclose(got, 0.25 * full, rtol=1e-5, atol=1e-7)  # float32 products, the same graph

    model.zero_grad()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"^sft step 1: the loss on pretraining text \(ptx\) became nan"):
        mix_backward(model, mix, 0.25, torch.device("cpu"), "sft step 1")
    assert all(p.grad is None for p in model.parameters())  # refused before anything reached the gradients
