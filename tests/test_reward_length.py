"""Reward models that do not pay for length: the `loss.length` methods, pinned by hand, and truncation.

Each method's terms on constructed batches (ODIN's correlation and orthogonality terms are in
test_reward_losses.py), the length covariate and the balancing weights worked out by hand, a model trained
with ODIN scoring with its reward head alone after reload, and how an over-long input is cut.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from reward_helpers import write_jsonl

from alignloop.config.base import load_config
from alignloop.reward.config import RewardConfig
from alignloop.reward.data import PromptGroup, collate_groups, encode_groups
from alignloop.reward.debias import LengthInputs, balance_weights, covariate_fit, log_lengths
from alignloop.reward.model import (
    DEBIAS_KEY,
    build_reward_model,
    cut_prompt_left,
    encode_decoder_group,
    encode_decoder_pair,
    encode_encoder_pair,
    keep_part,
    load_reward_model,
)
from alignloop.reward.objective import batch_objective
from alignloop.reward.stage import run_reward
from alignloop.runs import RunDir

pytestmark = pytest.mark.usefixtures("single_thread")

EPS32 = float(torch.finfo(torch.float32).eps)
NAN = float("nan")


def sp(x: float) -> float:
    """-log sigmoid(x) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


# ---- the length covariate and the balancing weights, by hand -------------------------------------------

def test_covariate_fit_by_hand():
    # Two pairs where the chosen reply is 30 characters longer, one where it is 30 shorter. Read both ways round,
    # d = (30, 30, -30, -30, -30, 30): sd (n - 1) = sqrt(6 * 900 / 5) = 30 sqrt(1.2), x = tanh(1 / sqrt(1.2)).
    x, beta = covariate_fit([30.0, 30.0, -30.0])
    t = math.tanh(1 / math.sqrt(1.2))
    assert x.tolist() == pytest.approx([t, t, -t], rel=1e-12)
    # At x = t the chosen side won 2 times of 3 (the two pairs, and the third read the other way round), so the
    # maximum likelihood has sigmoid(beta t) = 2/3: beta = ln 2 / t. The fit's ridge of 1e-6 moves it by about
    # 1e-6 * beta / (its curvature, 6 * 2/9 * t^2 = 0.77): well inside 1e-5.
    assert beta == pytest.approx(math.log(2) / t, rel=1e-5)
    # Length tells nothing when the longer reply wins as often as it loses.
    assert covariate_fit([30.0, -30.0])[1] == pytest.approx(0.0, abs=1e-9)


def test_balance_weights_by_hand():
    d = [10.0, 20.0, 30.0, -40.0, 50.0, -60.0, 0.0]
    # Two bins of |d| at its median over the unequal pairs, 35: {10, 20, 30} are all chosen-longer (nothing to
    # balance: weight 1); {40, 50, 60} have 1 chosen-longer and 2 chosen-shorter in 3: the longer one weighs
    # 3 / (2 * 1) = 1.5, each shorter one 3 / (2 * 2) = 0.75. Equal lengths keep 1.
    weights = balance_weights(d, 2)
    assert weights.tolist() == [1.0, 1.0, 1.0, 0.75, 1.5, 0.75, 1.0]
    assert weights.mean() == pytest.approx(1.0, rel=1e-12)
    # One bin: 4 longer, 2 shorter among 6: 6 / 8 = 0.75 and 6 / 4 = 1.5.
    assert balance_weights(d, 1).tolist() == [0.75, 0.75, 0.75, 1.5, 0.75, 1.5, 1.0]
    assert balance_weights(d, 0).tolist() == [1.0] * 7


def _groups() -> list[PromptGroup]:
    """Two prompts: one with three replies and two pairs, one with one pair."""
    return [PromptGroup("Tom found a cat.", ["Tom was happy. The end.", "cat cat.", "It was a day."],
                        pairs=[(0, 1, NAN), (2, 1, NAN)]),
            PromptGroup("Mia found a kite.", ["kite.", "Mia flew the kite all day. The end."], pairs=[(0, 1, NAN)])]


def test_length_inputs_follow_the_batch_order(tmp_path):
    groups = encode_groups(_groups(), lambda p, r: {"input_ids": [1] * (len(r) // 4 + 1)})
    inputs = LengthInputs(groups, covariate=True, balance=1)
    differences = [23 - 8, 13 - 8, 5 - 35]  # len(chosen) - len(rejected) of the three pairs, in order
    x, beta = covariate_fit(differences)
    assert inputs.beta == pytest.approx(beta, rel=1e-12)
    batch = inputs.batch([groups[1], groups[0]])  # a batch lists its groups in its own order
    collated = collate_groups([groups[1], groups[0]], pad_token_id=0)
    assert batch["response_length"].tolist() == pytest.approx(
        log_lengths(["kite.", "Mia flew the kite all day. The end.", "Tom was happy. The end.", "cat cat.",
                     "It was a day."]), rel=4 * EPS32)
    assert batch["response_length"].numel() == collated["input_ids"].shape[0]
    assert batch["pair_offset"].tolist() == pytest.approx([beta * x[2], beta * x[0], beta * x[1]], rel=4 * EPS32)
    # One bin, 2 chosen-longer and 1 chosen-shorter of 3: 3/4 each for the longer ones, 3/2 for the shorter.
    assert batch["pair_weight"].tolist() == [1.5, 0.75, 0.75]
    # covariate_scale multiplies the fitted beta.
    scaled = LengthInputs(groups, covariate=True, scale=2.0).batch([groups[0]])
    assert scaled["pair_offset"].tolist() == pytest.approx([2 * beta * x[0], 2 * beta * x[1]], rel=4 * EPS32)
    assert "pair_weight" not in scaled
    assert collated["pair_index"].shape[0] == batch["pair_weight"].numel()


# ---- each method's terms in the batch objective, by hand ---------------------------------------------------

def _one_pair_batch(**extra) -> dict[str, torch.Tensor]:
    batch = {"pair_index": torch.tensor([[0, 1]]), "pair_strength": torch.tensor([NAN]),
             "pair_uid": torch.tensor([0]), **{k: torch.zeros(0, dtype=torch.long) for k in
                                               ("tie_uid", "ranking_uid", "rating_uid")}}
    batch.update(extra)
    return batch


def test_covariate_adjusted_bradley_terry_on_a_constructed_pair():
    # r_c = 0.2, r_r = 0.5; the chosen reply is longer, x = tanh(1) = 0.7615942, beta = 1.5:
    # logit = 0.2 - 0.5 + 1.5 * 0.7615942 = 0.8423913, loss = sp(0.8423913) = log(1 + e^-0.8423913) = 0.3581495.
    rewards = torch.tensor([[0.2], [0.5]])
    offset = 1.5 * math.tanh(1.0)
    loss, _ = batch_objective(rewards, _one_pair_batch(pair_offset=torch.tensor([offset])))
    assert loss.item() == pytest.approx(sp(0.2 - 0.5 + offset), rel=8 * EPS32)
    assert sp(0.2 - 0.5 + offset) == pytest.approx(0.3581495, rel=1e-6)
    # Without the covariate the same pair costs sp(-0.3) = 0.8543552: the covariate explains the longer reply's
    # win, so the reward is asked for less.
    assert batch_objective(rewards, _one_pair_batch())[0].item() == pytest.approx(sp(-0.3), rel=8 * EPS32)
    # With a strength margin as well the two add up: margin 1 (strength 3) minus the offset.
    batch = _one_pair_batch(pair_offset=torch.tensor([offset]), pair_strength=torch.tensor([3.0]))
    assert batch_objective(rewards, batch, margin=1.0)[0].item() == \
        pytest.approx(sp(0.2 - 0.5 - 1.0 + offset), rel=8 * EPS32)


def test_balanced_weights_in_the_batch_objective():
    rewards = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    batch = _one_pair_batch(pair_index=torch.tensor([[0, 1], [2, 3]]), pair_strength=torch.tensor([NAN, NAN]),
                            pair_uid=torch.tensor([0, 1]), pair_weight=torch.tensor([1.5, 0.75]))
    # (1.5 sp(1) + 0.75 sp(0)) / 2 = (0.4698926 + 0.5198604) / 2 = 0.4948765
    loss, _ = batch_objective(rewards, batch)
    assert loss.item() == pytest.approx((1.5 * sp(1.0) + 0.75 * sp(0.0)) / 2, rel=8 * EPS32)
    assert loss.item() == pytest.approx(0.4948765, rel=1e-6)


def test_odin_trains_the_sum_and_adds_its_terms_once():
    # Two pairs over four replies; reward head q, length head l, log lengths L.
    q = [0.5, 0.0, 0.0, 1.0]
    l = [1.0, 0.0, 0.0, 1.0]
    rewards = torch.tensor([[a, b] for a, b in zip(q, l)])
    batch = _one_pair_batch(pair_index=torch.tensor([[0, 1], [2, 3]]), pair_strength=torch.tensor([NAN, NAN]),
                            pair_uid=torch.tensor([0, 1]), response_length=torch.tensor([3.0, 1.0, 1.0, 3.0]))
    # Bradley-Terry on q + l: (sp(1.5 - 0) + sp(0 - 2)) / 2.
    bt = (sp(1.5) + sp(-2.0)) / 2
    # L centred (1, -1, -1, 1), squares 4. q centred (.125, -.375, -.375, .625): products 1.5, squares 0.6875:
    # rho(q, L) = 1.5 / sqrt(4 * 0.6875) = 0.9045340, sd(q) = sqrt(0.6875 / 4). l centred (.5, -.5, -.5, .5):
    # rho(l, L) = 2 / sqrt(4) = 1, sd(l) = 0.5.
    odin = math.sqrt(0.6875 / 4) * (1.5 / math.sqrt(4 * 0.6875)) ** 2 - 0.5 * 1.0
    loss, figures = batch_objective(rewards, batch, length_heads=1, odin=2.0, orthogonality=torch.tensor(0.25),
                                    orthogonal=4.0)
    assert loss.item() == pytest.approx(bt + 2.0 * odin + 4.0 * 0.25, rel=16 * EPS32)
    # The figures are of the reward the model scores with: q alone (pair 1 right, pair 2 wrong).
    assert figures["accuracy"] == 0.5
    assert figures["length_corr"] == pytest.approx(1.5 / math.sqrt(4 * 0.6875), rel=16 * EPS32)


# ---- truncation: the prompt's oldest tokens go first, a reply only when it alone does not fit -------------

def test_keep_part_and_prompt_cut_by_hand():
    ids = list(range(1, 11))
    assert keep_part(ids, 4, "start") == [1, 2, 3, 4]
    assert keep_part(ids, 4, "end") == [7, 8, 9, 10]
    assert keep_part(ids, 4, "both") == [1, 2, 9, 10]
    assert keep_part(ids, 5, "both") == [1, 2, 3, 9, 10]
    # A decoder's EOS (the last id) stays whatever part is kept.
    assert keep_part(ids, 4, "start", last=1) == [1, 2, 3, 10]
    assert keep_part(ids, 4, "end", last=1) == [7, 8, 9, 10]
    assert keep_part(ids, 4, "both", last=1) == [1, 2, 9, 10]
    assert keep_part(ids, 12, "start") == ids
    # The prompt keeps its end, and its BOS when it starts with one.
    assert cut_prompt_left([0, 5, 6, 7, 8], 3, start_token=0) == [0, 7, 8]
    assert cut_prompt_left([5, 6, 7, 8], 3, start_token=0) == [6, 7, 8]
    assert cut_prompt_left([0, 5, 6], 5, start_token=0) == [0, 5, 6]


def test_encoder_cuts_the_prompts_start_and_keeps_the_reply(encoder_dir):
    reward = build_reward_model(encoder_dir, max_length=16)
    tok = reward.tokenizer
    ids = tok.convert_tokens_to_ids
    prompt = "tom found a cat ( 1 ) . mia found a kite ( 2 ) ."
    reply = "tom was happy . the end ."
    encoded = encode_encoder_pair(tok, prompt, reply, 16)
    # 16 = [CLS] + 6 prompt tokens + [SEP] + 7 reply tokens + [SEP]: the prompt's last 6, the reply whole.
    expected = ["[CLS]", "a", "kite", "(", "2", ")", ".", "[SEP]", *reply.split(), "[SEP]"]
    assert encoded["input_ids"] == ids(expected)
    assert encoded["token_type_ids"] == [0] * 8 + [1] * 8
    # A reply too long for the input alone keeps its start, after the prompt's last max_length // 4 = 4 tokens.
    long_reply = " ".join(["ball"] * 20)
    encoded = encode_encoder_pair(tok, prompt, long_reply, 16)
    assert encoded["input_ids"] == ids(["[CLS]", "(", "2", ")", ".", "[SEP]", *["ball"] * 9, "[SEP]"])
    end = encode_encoder_pair(tok, prompt, reply + " " + long_reply, 16, keep="end")
    assert end["input_ids"] == ids(["[CLS]", "(", "2", ")", ".", "[SEP]", *["ball"] * 9, "[SEP]"])
    both = encode_encoder_pair(tok, prompt, reply + " " + long_reply, 16, keep="both")
    assert both["input_ids"] == ids(["[CLS]", "(", "2", ")", ".", "[SEP]", "tom", "was", "happy", ".", "the",
                                     *["ball"] * 4, "[SEP]"])


def test_decoder_cuts_the_prompt_after_bos_and_keeps_a_reply_that_fits(decoder_dir):
    from alignloop.data.formatting import encode_prompt, encode_response

    reward = build_reward_model(decoder_dir, max_length=128)
    tok = reward.tokenizer
    prompt = "Tom found a cat (1). Mia found a kite (2). Ben found a ball (3). Lily found a book (4)."
    reply = " ".join(["Tom was happy. The end."] * 6)
    prompt_ids, reply_ids = encode_prompt(tok, prompt), encode_response(tok, prompt, reply)
    assert prompt_ids[0] == tok.bos_token_id and reply_ids[-1] == tok.eos_token_id
    assert len(reply_ids) >= 32 and len(prompt_ids) > 9
    # Room for the reply and the prompt's last 8 tokens (max_length // 4 is more than 8): the reply is whole,
    # the prompt keeps its BOS and its last 7 tokens. (Before, a quarter of max_length was kept for the prompt
    # and a reply of more than three quarters of it was cut.)
    max_length = len(reply_ids) + 8
    encoded = encode_decoder_pair(tok, prompt, reply, max_length)["input_ids"]
    assert encoded == [tok.bos_token_id] + prompt_ids[-7:] + reply_ids
    # One token less and the reply, too long alone, loses its last token before EOS.
    encoded = encode_decoder_pair(tok, prompt, reply, max_length - 1)["input_ids"]
    assert encoded == [tok.bos_token_id] + prompt_ids[-7:] + reply_ids[:-2] + reply_ids[-1:]
    # Packed reading cuts alike.
    group_prompt, (group_reply,) = encode_decoder_group(tok, prompt, [reply], max_length)
    assert group_prompt + group_reply == [tok.bos_token_id] + prompt_ids[-7:] + reply_ids


def test_an_ensemble_scores_as_one_model_only_when_its_members_read_alike(decoder_dir, encoder_dir):
    from alignloop.errors import CheckpointError
    from alignloop.reward.ensemble import RewardEnsemble

    alike = RewardEnsemble([build_reward_model(decoder_dir, max_length=32) for _ in range(2)])
    assert alike.reading_problem() is None
    pair = ("Tom found a cat.", "He was happy.")
    assert alike.encode(*pair) == alike.members[1].encode(*pair)
    for other in (build_reward_model(decoder_dir, max_length=48), build_reward_model(encoder_dir, max_length=32)):
        mixed = RewardEnsemble([build_reward_model(decoder_dir, max_length=32), other])
        assert "read replies differently" in mixed.reading_problem()
        with pytest.raises(CheckpointError, match="score them one at a time"):
            mixed.encode(*pair)


# ---- a model trained with a method scores with it, after reload too ---------------------------------------------

def _length_pairs(n: int) -> list[dict]:
    """TRL pairs where the chosen reply is the longer one two times in three."""
    out = []
    for i in range(n):
        happy, short = f"Tom was happy and played with his friend all day ({i}). The end.", "cat cat."
        out.append({"prompt": f"Tom found a cat ({i}).", "chosen": happy if i % 3 else short,
                    "rejected": short if i % 3 else happy})
    return out


FAST = ["train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=0", "train.eval_every=2", "train.save_every=4",
        "train.threads=1", "train.patience=0", "train.epochs=1", "model.max_length=48", "data.val_fraction=0.25"]


def _train(tmp_path: Path, backbone: Path, *settings: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "prefs.jsonl", _length_pairs(32))
    cfg = load_config(RewardConfig, None, [f"data.path={data}", f"model.path={backbone}", *FAST, *settings])
    run_reward(RunDir(tmp_path / "run").ensure(), cfg, log=lambda _: None)
    return tmp_path / "run" / "rounds" / "001" / "reward"


def test_odin_model_scores_with_its_reward_head_after_reload(encoder_dir, tmp_path):
    stage = _train(tmp_path, encoder_dir, "loss.length.odin=1", "loss.length.orthogonal=1")
    # The best model as training kept it: reward head and length head (a resumed run rebuilds it so, too).
    trained = build_reward_model(stage / "best", 1, max_length=48)
    assert trained.length_heads == 1 and trained.num_heads == 1
    final = load_reward_model(stage / "final", device="cpu")
    assert final.length_heads == 0 and final.num_heads == 1 and final.model.config.num_labels == 1
    record = getattr(final.model.config, DEBIAS_KEY)
    assert record["odin"]["correlation"] == 1.0 and "covariate" not in record
    prompts = [f"Tom found a cat ({i})." for i in range(4)]
    replies = ["Tom was happy and played with his friend all day. The end.", "cat cat.", "Tom was happy.", "cat."]
    reloaded = final.score_texts(prompts, replies)
    with torch.no_grad():
        batch = trained.collate([trained.encode(p, r) for p, r in zip(prompts, replies)])
        outputs = trained.eval().outputs(**batch)
    # After reload the score is the reward head's alone (the same weights, read the same way) ...
    assert reloaded.tolist() == pytest.approx(outputs[:, 0].tolist(), abs=64 * EPS32 * float(outputs.abs().max()))
    # In memory too, every scoring path reads the reward head alone: score_texts, and forward (PPO's scorer).
    assert trained.score_texts(prompts, replies).tolist() == pytest.approx(reloaded.tolist(), rel=1e-5, abs=1e-6)
    with torch.no_grad():
        assert trained(**batch).tolist() == outputs[:, 0].tolist()
    # ... not the sum training scored with, which the length head moves.
    assert float((outputs.sum(dim=1) - reloaded).abs().max()) > 1e-3
    from safetensors.torch import load_file

    assert load_file(str(stage / "final" / "model.safetensors"))["classifier.weight"].shape == (1, 32)


def test_covariate_and_balance_models_say_how_they_were_trained(decoder_dir, tmp_path):
    stage = _train(tmp_path, decoder_dir, "loss.length.covariate=true", "loss.length.balance=2")
    config = json.loads((stage / "final" / "config.json").read_text())
    record = config[DEBIAS_KEY]
    # The chosen reply is the longer one in most training pairs: a positive beta.
    assert record["covariate"]["beta"] > 0 and record["balance"] == {"bins": 2}
    assert len(config["id2label"]) == 1
    plain = _train(tmp_path / "plain", decoder_dir)
    assert DEBIAS_KEY not in json.loads((plain / "final" / "config.json").read_text())
