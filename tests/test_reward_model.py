"""The reward model: scalar at the last real token (any padding), encoders pooled, save and load."""

from __future__ import annotations

import json

import pytest
import torch
from reward_helpers import tiny_decoder

from alignloop.errors import CheckpointError, ConfigError
from alignloop.reward.model import (
    RewardStats,
    build_reward_model,
    last_token_index,
    load_reward_model,
    masked_mean_pool,
    pad_batch,
    response_mean_pool,
)

PROMPTS = ["Tom found a cat (1).", "Mia found a kite (2)."]
RESPONSES = ["Tom was happy. The end.", "kite kite kite kite kite kite."]


def test_last_token_index_and_mean_pool_by_hand():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 3, 0]
    hidden = torch.tensor([[[1.0], [3.0], [5.0], [100.0]]])
    assert masked_mean_pool(hidden, torch.tensor([[1, 1, 1, 0]])).item() == pytest.approx(3.0)


def test_decoder_reward_ignores_padding_side_and_batch(decoder_dir):
    reward = build_reward_model(decoder_dir).eval()
    assert reward.is_decoder and reward.num_heads == 1
    encoded = [reward.encode(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert encoded[0]["input_ids"][0] == reward.tokenizer.bos_token_id
    assert encoded[0]["input_ids"][-1] == reward.tokenizer.eos_token_id
    right = pad_batch(encoded, reward.tokenizer.pad_token_id)
    width = right["input_ids"].shape[1]
    left_ids = torch.full_like(right["input_ids"], reward.tokenizer.pad_token_id)
    left_mask = torch.zeros_like(right["attention_mask"])
    for row, e in enumerate(encoded):
        left_ids[row, width - len(e["input_ids"]):] = torch.tensor(e["input_ids"])
        left_mask[row, width - len(e["input_ids"]):] = 1
    with torch.no_grad():
        r_right = reward(right["input_ids"], right["attention_mask"])
        r_left = reward(left_ids, left_mask)
        alone = torch.cat([reward(**pad_batch([e], 0)) for e in encoded])
    assert r_right.shape == (2,)
    assert torch.allclose(r_right, r_left, atol=1e-5)
    assert torch.allclose(r_right, alone, atol=1e-5)
    # score_texts goes through the same path, in the caller's order.
    assert torch.allclose(reward.score_texts(PROMPTS[::-1], RESPONSES[::-1]), r_right.flip(0), atol=1e-5)


def test_pad_equal_to_eos_still_scores_the_eos(tmp_path):
    # With pad == eos, HF's own pooling would skip the final EOS; the mask-based index must not.
    directory = tiny_decoder(tmp_path / "pad_eos", pad_is_eos=True)
    reward = build_reward_model(directory).eval()
    encoded = [reward.encode(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    batch = pad_batch(encoded, reward.tokenizer.pad_token_id)
    with torch.no_grad():
        pooled = reward(**batch)
        backbone = reward.model.model(input_ids=batch["input_ids"][:1, :len(encoded[0]["input_ids"])])[0]
        expected = reward.model.score(backbone[0, -1]).squeeze()
    assert pooled[0].item() == pytest.approx(expected.item(), abs=1e-5)


def test_save_load_round_trip_with_stats(decoder_dir, tmp_path):
    reward = build_reward_model(decoder_dir, max_length=64)
    reward.stats = RewardStats(mean=2.0, std=4.0, n=10)
    reward.save(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "reward_stats.json").read_text()) == {"mean": 2.0, "std": 4.0, "n": 10}
    loaded = load_reward_model(tmp_path / "rm", device="cpu")
    assert loaded.max_length == 64 and loaded.stats.std == 4.0
    assert torch.allclose(loaded.score_texts(PROMPTS, RESPONSES), reward.eval().score_texts(PROMPTS, RESPONSES),
                          atol=1e-5)
    assert loaded.normalise(torch.tensor([6.0, 2.0])).tolist() == [1.0, 0.0]
    # A warm start from a reward model keeps its trained head.
    again = build_reward_model(tmp_path / "rm")
    assert torch.equal(again.model.score.weight, loaded.model.score.weight)


def test_missing_stats_mean_zero_std_one_and_bad_dirs(decoder_dir, tmp_path):
    reward = build_reward_model(decoder_dir)
    reward.save(tmp_path / "rm")
    (tmp_path / "rm" / "reward_stats.json").unlink()
    assert load_reward_model(tmp_path / "rm", "cpu").stats == RewardStats(0.0, 1.0, 0)
    (tmp_path / "rm" / "reward_stats.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="reward_stats.json"):
        load_reward_model(tmp_path / "rm", "cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_reward_model(tmp_path / "nowhere")


def test_encoder_backbone_pools_and_pairs(encoder_dir, tmp_path):
    reward = build_reward_model(encoder_dir, max_length=16)
    assert not reward.is_decoder and reward.pooling == "mean"
    encoded = reward.encode("tom found a cat " * 10, "tom was happy. the end.")
    ids = encoded["input_ids"]
    assert len(ids) == 16  # cut to fit, the prompt's start going first
    assert ids[0] == reward.tokenizer.cls_token_id and ids.count(reward.tokenizer.sep_token_id) == 2
    assert encoded["token_type_ids"][-1] == 1
    response_ids = reward.tokenizer("tom was happy. the end.", add_special_tokens=False)["input_ids"]
    assert ids[-1 - len(response_ids):-1] == response_ids  # the response is whole
    scores = reward.score_texts(PROMPTS, RESPONSES)
    reward.save(tmp_path / "enc")
    loaded = load_reward_model(tmp_path / "enc", "cpu")
    assert loaded.pooling == "mean"
    assert torch.allclose(loaded.score_texts(PROMPTS, RESPONSES), scores, atol=1e-5)


def test_response_mean_pool_by_hand():
    hidden = torch.tensor([[[1.0], [2.0], [3.0], [4.0]], [[5.0], [7.0], [0.0], [9.0]]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    types = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])
    # Row 0: the response's tokens 3 and 4 -> 3.5; row 1 has no response token: every real one -> 4.
    assert response_mean_pool(hidden, mask, types).flatten().tolist() == pytest.approx([3.5, 4.0])
    assert response_mean_pool(hidden, mask, None).flatten().tolist() == pytest.approx([2.5, 4.0])


def test_response_pooling_ignores_the_prompt_tokens(encoder_dir, tmp_path):
    reward = build_reward_model(encoder_dir, max_length=32, pooling="response")
    assert reward.pooling == "response"
    batch = reward.collate([reward.encode(p, r) for p, r in zip(PROMPTS, RESPONSES)])
    with torch.no_grad():
        hidden = reward._backbone(**batch)[0]
        segment = batch["attention_mask"] * batch["token_type_ids"]
        expected = reward._head(masked_mean_pool(hidden, segment)).squeeze(-1)
    assert torch.allclose(reward.score_texts(PROMPTS, RESPONSES), expected, atol=1e-5)
    reward.save(tmp_path / "resp")
    assert load_reward_model(tmp_path / "resp", "cpu").pooling == "response"


def test_response_pooling_refused_for_a_decoder(decoder_dir):
    with pytest.raises(ConfigError, match="pooling=response is for encoders"):
        build_reward_model(decoder_dir, pooling="response")


def test_checkpoint_made_elsewhere_uses_its_own_head(encoder_dir, tmp_path):
    # A sequence-classification checkpoint without our keys (as TRL writes them) is scored by its own forward.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(encoder_dir), num_labels=1)
    model.save_pretrained(str(tmp_path / "trl"))
    AutoTokenizer.from_pretrained(str(encoder_dir)).save_pretrained(str(tmp_path / "trl"))
    reward = load_reward_model(tmp_path / "trl", "cpu")
    assert reward.pooling == "native"
    batch = reward.tokenizer(PROMPTS, RESPONSES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**batch).logits.squeeze(-1)
    assert torch.allclose(reward.score_texts(PROMPTS, RESPONSES), expected, atol=1e-5)


def test_heads_ensemble_mean(decoder_dir):
    reward = build_reward_model(decoder_dir, num_heads=3).eval()
    heads = reward.score_texts(PROMPTS, RESPONSES, all_heads=True)
    assert heads.shape == (2, 3)
    assert torch.allclose(reward.score_texts(PROMPTS, RESPONSES), heads.mean(dim=1), atol=1e-6)


def test_packed_reading_gives_the_same_rewards(decoder_dir):
    from alignloop.reward.model import pack_groups

    reward = build_reward_model(decoder_dir, max_length=64).eval()
    groups = [("Tom found a cat (1).", ["Tom was happy. The end.", "cat cat cat.", "He smiled."]),
              ("Mia found a kite (2).", ["kite kite kite kite kite kite kite."])]
    batch = pack_groups([reward.encode_group(p, rs) for p, rs in groups], reward.tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 2  # one row per prompt
    with torch.no_grad():
        packed = reward.packed_heads(**batch).squeeze(-1)
    plain = torch.cat([reward.score_texts([p] * len(rs), rs) for p, rs in groups])
    assert torch.allclose(packed, plain, atol=1e-5)


# ---- training guards: packed reading only under SDPA, dropout off unless asked, thin statistics ------------

GROUP_PROMPTS = ["Tom found a cat (1).", "Mia found a kite (2).", "Ben found a ball (3).", "Lily found a book (4)."]


def preference_groups():
    """Each prompt with three responses and two comparisons, so packing puts several responses in one row."""
    from alignloop.reward.data import PromptGroup

    nan = float("nan")
    return [PromptGroup(p, [f"{p.split()[0]} was happy. The end.", "cat cat cat cat.", "It was a day."],
                        pairs=[(0, 1, nan), (0, 2, nan)]) for p in GROUP_PROMPTS]


def gpt2_with_dropout(directory, decoder_dir):
    """A 2-layer GPT-2 with GPT-2's own dropout (0.1 everywhere), on the tiny decoder's tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(str(decoder_dir))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def first_step(reward, tmp_path, packed: bool, **settings):
    """Train one step on the four groups (one batch); returns (logged loss, the batch's loss recomputed after).

    The learning rate is so small that the step leaves every weight as it was, so the batch's loss recomputed
    in eval mode (no dropout), read unpacked, is what the logged step-1 loss must be when training reads
    exactly what scoring reads.
    """
    from alignloop.reward.config import RewardLossConfig, RewardTrainConfig
    from alignloop.reward.data import MODEL_INPUTS, PreferenceBatches, collate_groups, encode_groups
    from alignloop.reward.objective import batch_objective
    from alignloop.reward.train import train_reward_model

    encoded = encode_groups(preference_groups(), reward.encode, encode_parts=reward.encode_group if packed else None)
    data = PreferenceBatches(encoded, len(encoded), reward.tokenizer.pad_token_id, seed=0, packed=packed)
    assert data.packed == packed
    cfg = RewardTrainConfig(max_steps=1, epochs=None, batch_size=len(encoded), lr=1e-30, warmup_steps=0,
                            weight_decay=0.0, device="cpu", threads=1, log_every=1, **settings)
    said = []
    train_reward_model(stage="reward", stage_dir=tmp_path / "stage", reward=reward, data=data, val_groups=[],
                       cfg=cfg, loss_cfg=RewardLossConfig(), stats_groups=encoded, final_dir=tmp_path / "final",
                       log=said.append)
    logged = json.loads((tmp_path / "stage" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    batch = collate_groups([encoded[i] for i in data.batch_groups(0)], reward.tokenizer.pad_token_id)
    rewards = reward.eval().heads(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    return logged, float(batch_objective(rewards.float(), batch)[0].detach()), said


def test_eager_attention_is_never_read_packed(decoder_dir, tmp_path):
    from alignloop.reward.model import pack_groups

    torch.manual_seed(0)
    reward = build_reward_model(decoder_dir, max_length=64)
    reward.model.set_attn_implementation("eager")
    assert reward.attention == "eager" and not reward.can_pack
    # The packed mask under eager attention: added to the scores as 0/1, so every response sees the others.
    batch = pack_groups([reward.encode_group(p, ["Tom was happy.", "cat cat."]) for p in GROUP_PROMPTS[:2]],
                        reward.tokenizer.pad_token_id)
    with pytest.raises(ConfigError, match="SDPA attention.*eager.*share_prompt=false"):
        reward.packed_heads(**batch)
    # Training handed packed batches (as the stage did before it asked) reads them unpacked: its first-step
    # loss is the loss of the batch read one response at a time (a packed eager read is off by ~1e-3).
    logged, expected, said = first_step(reward, tmp_path, packed=True)
    assert logged == pytest.approx(expected, rel=8 * torch.finfo(torch.float32).eps)
    assert any("eager attention cannot read packed prompt groups" in line for line in said)


def test_sdpa_attention_is_still_read_packed(decoder_dir, tmp_path):
    torch.manual_seed(0)
    reward = build_reward_model(decoder_dir, max_length=64)
    assert reward.attention == "sdpa" and reward.can_pack
    logged, expected, said = first_step(reward, tmp_path, packed=True)
    # Packed and unpacked reads differ by float rounding only (different batch layouts): the loss's scale times
    # a few dozen ulps.
    assert logged == pytest.approx(expected, rel=64 * torch.finfo(torch.float32).eps)
    assert not any("cannot read packed" in line for line in said)


def test_reward_training_turns_the_backbones_dropout_off_unless_asked(decoder_dir, tmp_path):
    backbone = gpt2_with_dropout(tmp_path / "gpt2", decoder_dir)
    eps = torch.finfo(torch.float32).eps
    for dropout in (False, True):
        torch.manual_seed(0)
        reward = build_reward_model(backbone, max_length=64)
        assert reward.model.config.resid_pdrop == 0.1
        logged, expected, _ = first_step(reward, tmp_path / str(dropout), packed=False, dropout=dropout)
        if dropout:  # a random mask on every activation: the step's rewards are not the model's rewards
            assert abs(logged - expected) > 1e3 * eps * expected
        else:
            assert logged == pytest.approx(expected, rel=8 * eps)


def test_thin_reward_statistics_are_warned_about(decoder_dir, tmp_path):
    from alignloop.reward.model import stats_warning

    reward = build_reward_model(decoder_dir, max_length=64)
    assert "has no reward_stats.json" in stats_warning(tmp_path, RewardStats())
    reward.stats = RewardStats(0.5, 2.0, 199)
    reward.save(tmp_path / "thin")
    assert "comes from 199 responses (fewer than 200)" in stats_warning(tmp_path / "thin", reward.stats)
    assert stats_warning(tmp_path / "thin", RewardStats(0.5, 2.0, 200)) is None
    # Training writes statistics from its 12 responses here, and says they are thin.
    _, _, said = first_step(reward, tmp_path, packed=False)
    assert any("warning: reward_stats.json comes from 12 responses" in line for line in said)
