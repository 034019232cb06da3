"""PPO's experience, through the real sampler, reward model, reference and critic on a tiny model.

- at initialisation (policy = reference, dropout off) the KL is 0 and the ratio pi/pi_old is 1 on the
  first minibatch, within 1e-5;
- masks cover response tokens up to EOS only, never prompt or padding;
- the score lands on the last response token, the KL penalty on every response token.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.data.formatting import encode_prompt, encode_response
from alignloop.generation.sampler import RolloutBatch
from alignloop.models.causal_lm import load_causal_lm
from alignloop.reward.model import load_reward_model
from alignloop.rl.config import PPOConfig
from alignloop.rl.critic import critic_from_policy, critic_from_reward_model
from alignloop.rl.ppo import compute_advantages, policy_forward, ppo_state, ppo_update, shape_token_rewards
from alignloop.rl.rollout import RewardScorer, encode_prompts, make_experience, make_sampler, prompt_indices
from alignloop.tokenizer import load_tokenizer
from conftest import RL_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")


def likely_eos(model, tokenizer, logit: float = 3.0):
    """Make EOS a likely next token everywhere (so responses end at different lengths).

    The output embedding of EOS is moved along the mean final hidden state, which raises
    EOS's logit by about `logit` in every state.
    """
    ids = torch.tensor([encode_prompt(tokenizer, " ".join(RL_PROMPTS))])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        direction = hidden.mean(0)
        model.get_output_embeddings().weight[tokenizer.eos_token_id] += logit * direction / direction.square().sum()
    return model


@pytest.fixture
def parts(rl_run_template):
    """Policy (= reference weights), reference, reward model, tokenizer, config for a short rollout."""
    torch.manual_seed(0)
    start = rl_run_template / "pretrain" / "final"
    tokenizer = load_tokenizer(start)
    policy = likely_eos(load_causal_lm(start), tokenizer)
    reference = load_causal_lm(start)
    reference.load_state_dict(policy.state_dict())
    reward_model = load_reward_model(rl_run_template / "rounds" / "001" / "reward" / "final", "cpu")
    cfg = PPOConfig.model_validate({"sampling": {"max_new_tokens": 10, "batch_size": 8},
                                    "ppo": {"epochs": 2, "minibatches": 2, "grad_accum": 2}})
    return policy, reference, reward_model, tokenizer, cfg


def experience(policy, reference, reward_model, tokenizer, cfg, critic, seed=0):
    scorer = RewardScorer(reward_model, tokenizer)
    generator = torch.Generator().manual_seed(seed)
    prompts = RL_PROMPTS
    return make_experience(policy=policy, reference=reference, critic=critic, scorer=scorer, tokenizer=tokenizer,
                           sampler=make_sampler(cfg.sampling, tokenizer), prompts=prompts,
                           prompt_ids=encode_prompts(tokenizer, prompts, 64), generator=generator,
                           shaping=cfg.reward, batch_size=cfg.sampling.batch_size)


def test_kl_is_zero_and_ratio_is_one_at_initialisation(parts, rl_run_template):
    policy, reference, reward_model, tokenizer, cfg = parts
    critic = critic_from_reward_model(rl_run_template / "rounds" / "001" / "reward" / "final")
    exp = experience(policy, reference, reward_model, tokenizer, cfg, critic)
    mask = exp.response_mask
    assert mask.sum() > 0
    # KL = 0: the reference recomputes, in one full forward, what the sampler recorded step by step.
    assert (exp.logprobs - exp.ref_logprobs).abs().max() < 1e-5
    assert abs(float(((exp.logprobs - exp.ref_logprobs) * mask).sum(-1).mean())) < 1e-5

    # Ratio = 1 on the first minibatch: the training forward (with grad) of the first minibatch.
    state = ppo_state(policy, reference, critic, RewardScorer(reward_model, tokenizer), tokenizer, cfg)
    first = exp.select(torch.arange(4))
    logprobs, entropy = policy_forward(state.policy, first, cfg.sampling.temperature)
    assert logprobs.requires_grad
    ratio = torch.exp(logprobs.detach() - first.logprobs)
    assert ((ratio - 1).abs() * first.response_mask).max() < 1e-5
    assert (entropy * first.response_mask).sum() > 0

    # ... and the same check as the update logs it, on its own first minibatch.
    shape_token_rewards(exp, cfg, state.kl_controller.beta)
    compute_advantages(exp, cfg)
    stats = ppo_update(state, exp, cfg)
    assert stats["ratio_dev"] < 1e-5
    assert stats["epochs_run"] == 2 and stats["minibatch_steps"] == 4
    assert math.isfinite(stats["policy_loss"]) and math.isfinite(stats["value_loss"])


def test_masks_cover_response_tokens_only_and_score_lands_on_the_last(parts, rl_run_template):
    policy, reference, reward_model, tokenizer, cfg = parts
    critic = critic_from_policy(rl_run_template / "pretrain" / "final")
    exp = experience(policy, reference, reward_model, tokenizer, cfg, critic)
    mask = exp.response_mask
    lengths = mask.sum(-1).long()
    # Different prompt lengths (left padding) and responses that stop at EOS at different lengths.
    assert len(set(len(p) for p in encode_prompts(tokenizer, RL_PROMPTS, 64))) > 1
    assert exp.ended_with_eos.any() and len(set(lengths.tolist())) > 1

    response = exp.response_ids
    for row in range(len(exp)):
        n = int(lengths[row])
        assert mask[row, :n].eq(1).all() and mask[row, n:].eq(0).all()  # contiguous, from the first token
        if exp.ended_with_eos[row]:
            assert response[row, n - 1] == tokenizer.eos_token_id
        assert response[row, n:].eq(tokenizer.pad_token_id).all()
    # Prompt columns are never in the response mask; the attention mask agrees on the response part.
    assert torch.equal(exp.attention_mask[:, exp.prompt_length:].float(), mask)
    prompt_mask = exp.attention_mask[:, :exp.prompt_length]
    assert (prompt_mask == 0).any()  # left padding exists
    for name in ("logprobs", "ref_logprobs", "values"):
        assert getattr(exp, name)[mask == 0].eq(0).all(), name
    assert exp.values[mask == 1].eq(0).all()  # a critic from the policy starts with a zero head

    beta = 0.5
    kl = shape_token_rewards(exp, cfg, beta)
    rewards = exp.token_rewards
    assert rewards[mask == 0].eq(0).all()
    for row in range(len(exp)):
        last = int(lengths[row]) - 1
        expected = -beta * kl[row, :last + 1]
        expected[last] += exp.rewards[row]
        assert torch.allclose(rewards[row, :last + 1], expected, atol=1e-6)

    # The shaped reward: normalised with reward_stats.json (mean 0.1, std 2), clipped, -1 without EOS.
    expected_rewards = ((exp.scores - 0.1) / 2.0).clamp(-5, 5) - (~exp.ended_with_eos).float()
    assert torch.allclose(exp.rewards, expected_rewards, atol=1e-6)


def test_scoring_by_ids_equals_scoring_by_text(rl_run_template):
    tokenizer = load_tokenizer(rl_run_template / "pretrain" / "final")
    reward_model = load_reward_model(rl_run_template / "rounds" / "001" / "reward" / "final", "cpu")
    scorer = RewardScorer(reward_model, tokenizer)
    assert scorer.by_ids
    pairs = [("Tom went to the park.", "Tom saw a dog. The end."), ("Mia", "was happy."),
             ("Ben saw a kite.", "The kite was very nice. Ben was happy. The end.")]
    prompts = [encode_prompt(tokenizer, p) for p, _ in pairs]
    responses = [encode_response(tokenizer, p, r) for p, r in pairs]
    width_p, width_r = max(map(len, prompts)), max(map(len, responses))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width_p - len(p)) + p + r + [pad] * (width_r - len(r))
                        for p, r in zip(prompts, responses)])
    mask = torch.tensor([[0] * (width_p - len(p)) + [1] * (len(p) + len(r)) + [0] * (width_r - len(r))
                         for p, r in zip(prompts, responses)])
    batch = RolloutBatch(input_ids=ids, attention_mask=mask, prompt_length=width_p, response_ids=ids[:, width_p:],
                         response_mask=mask[:, width_p:], logprobs=torch.zeros(3, width_r),
                         ended_with_eos=torch.ones(3, dtype=torch.bool))
    by_ids = scorer.score(batch, [p for p, _ in pairs], [r for _, r in pairs])
    by_text = reward_model.score_texts([p for p, _ in pairs], [r for _, r in pairs])
    assert torch.allclose(by_ids, by_text, atol=1e-5)


def test_prompt_order_is_a_function_of_the_iteration():
    seen = [i for it in range(4) for i in prompt_indices(it, 5, 10, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))  # each pass covers all
    assert seen[:10] != seen[10:20]  # reshuffled each pass
    assert prompt_indices(2, 5, 10, seed=3) == seen[10:15]


def test_one_minibatch_reuses_the_rollout_critic_pass(parts, rl_run_template):
    """minibatches=1, grad_accum=1 computes the old values with grad and reuses them in the update:
    the same losses and the same updated critic as the separate no-grad pass (grad_accum=2 splits the
    same minibatch in two, which weights tokens the same way)."""
    from alignloop.config.base import load_config
    from alignloop.rl.ppo import ppo_iteration

    policy, reference, reward_model, tokenizer, _ = parts
    rm_path = rl_run_template / "rounds" / "001" / "reward" / "final"
    results = []
    for accumulate in (1, 2):
        cfg = load_config(PPOConfig, None, ["sampling.max_new_tokens=8", "ppo.epochs=1", "ppo.minibatches=1",
                                            f"ppo.grad_accum={accumulate}"])
        fresh_policy = load_causal_lm(rl_run_template / "pretrain" / "final")
        fresh_policy.load_state_dict(policy.state_dict())
        state = ppo_state(fresh_policy, reference, critic_from_reward_model(rm_path),
                          RewardScorer(reward_model, tokenizer), tokenizer, cfg)
        torch.manual_seed(0)
        _, stats = ppo_iteration(state, RL_PROMPTS, encode_prompts(tokenizer, RL_PROMPTS, 64), cfg)
        results.append((stats, [p.detach().clone() for p in state.critic.parameters()]))
    (fused, fused_critic), (split, split_critic) = results
    assert fused["value_loss"] == pytest.approx(split["value_loss"], rel=1e-5)
    assert fused["policy_loss"] == pytest.approx(split["policy_loss"], rel=1e-4, abs=1e-7)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused_critic, split_critic))


def test_approximate_kl_above_target_stops_the_epochs(parts, rl_run_template):
    policy, reference, reward_model, tokenizer, _ = parts
    cfg = PPOConfig.model_validate({"sampling": {"max_new_tokens": 8}, "ppo": {"epochs": 3, "minibatches": 2,
                                                                               "target_kl": 1e-12, "lr": 1e-3}})
    critic = critic_from_reward_model(rl_run_template / "rounds" / "001" / "reward" / "final")
    state = ppo_state(policy, reference, critic, RewardScorer(reward_model, tokenizer), tokenizer, cfg)
    exp = experience(policy, reference, reward_model, tokenizer, cfg, critic)
    shape_token_rewards(exp, cfg, state.kl_controller.beta)
    compute_advantages(exp, cfg)
    stats = ppo_update(state, exp, cfg)
    # The first step only measures the rollout policy (approx KL 0); the second has moved it past the target.
    assert stats["minibatch_steps"] == 2 and stats["epochs_run"] == 1


def test_a_critic_copied_from_the_reward_model_predicts_the_normalised_reward(rl_run_template, tmp_path):
    """With normalisation on, PPO's reward at the last token is (score - mean) / std: the copied critic's value
    where the reward model reads its score (the EOS position) is that, not the raw score."""
    import json
    import shutil

    from alignloop.reward.model import RewardStats, encode_decoder_pair, last_token_index, pad_batch
    from alignloop.rl.critic import load_critic

    rm_path = tmp_path / "reward"
    shutil.copytree(rl_run_template / "rounds" / "001" / "reward" / "final", rm_path)
    (rm_path / "reward_stats.json").write_text(json.dumps({"mean": 1.7, "std": 0.4, "n": 500}))
    reward_model = load_reward_model(rm_path, "cpu")
    assert reward_model.stats == RewardStats(1.7, 0.4, 500)
    critic = critic_from_reward_model(rm_path, reward_model.stats)

    pairs = [("Tom went to the park.", "Tom saw a dog. The end."), ("Zoe", "Zoe was happy."),
             ("Mia saw a cat.", "The cat was very nice. Mia was happy. The end.")]
    batch = pad_batch([encode_decoder_pair(reward_model.tokenizer, p, r, 64) for p, r in pairs],
                      reward_model.tokenizer.pad_token_id)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        normalised = reward_model.normalise(reward_model(ids, mask))
        # The critic's value of position j reads the hidden state at j - 1 (the state before token j), so one
        # padding column on the right makes its last value read the EOS position, the reward model's.
        values = critic(torch.nn.functional.pad(ids, (0, 1), value=reward_model.tokenizer.pad_token_id),
                        torch.nn.functional.pad(mask, (0, 1)), 1)
        at_eos = values[torch.arange(len(pairs)), last_token_index(mask)]
        # float32 bound: the head's products |w_i h_i| summed, and the shift, each rounded a few dozen times.
        hidden = reward_model._backbone(input_ids=ids, attention_mask=mask)[0][torch.arange(len(pairs)),
                                                                                last_token_index(mask)]
        magnitude = (hidden.abs() @ reward_model._head.weight.abs().T).squeeze(-1) + abs(reward_model.stats.mean)
    tolerance = 64 * torch.finfo(torch.float32).eps * magnitude / reward_model.stats.std
    assert ((at_eos - normalised).abs() <= tolerance).all(), (at_eos, normalised, tolerance)
    raw = reward_model(ids, mask)
    assert ((at_eos - raw).abs() > 1.0).all()  # the raw head would be off by about (mean - score (1 - std)) / std

    # Resuming PPO reloads the critic from its checkpoint: the same values (the shift is in its config.json).
    critic.save_pretrained(tmp_path / "critic")
    reloaded = load_critic(tmp_path / "critic")
    with torch.no_grad():
        assert torch.equal(reloaded(ids, mask, 1), critic(ids, mask, 1))
    # Without normalisation the critic is the reward model's head as it is.
    plain = critic_from_reward_model(rm_path)
    with torch.no_grad():
        plain_values = plain(torch.nn.functional.pad(ids, (0, 1), value=reward_model.tokenizer.pad_token_id),
                             torch.nn.functional.pad(mask, (0, 1)), 1)
    assert torch.allclose(plain_values[torch.arange(len(pairs)), last_token_index(mask)], raw,
                          atol=float(tolerance.max() * reward_model.stats.std))


def test_recompute_logprobs_auto_rule():
    from alignloop.rl.rollout import recompute_logprobs_on

    # auto: on when the sampler's precision is not the training forward's, or is not exact fp32
    assert recompute_logprobs_on("auto", "bf16", "fp32") and recompute_logprobs_on("auto", "fp32", "bf16")
    assert recompute_logprobs_on("auto", "bf16", "bf16")
    assert not recompute_logprobs_on("auto", "fp32", "fp32")
    # an explicit setting wins either way
    assert recompute_logprobs_on(True, "fp32", "fp32") and not recompute_logprobs_on(False, "bf16", "fp32")


def test_logprob_gap_by_hand():
    from alignloop.rl.rollout import logprob_gap

    # log r = forward - sampler = [-0.5, 1.0] on the valid tokens; the padded third token (gap 5) never counts.
    # k3: e^-0.5 - 1 + 0.5 = 0.1065307, e - 1 - 1 = 0.7182818; mean 0.4124063; max |log r| = 1.
    gap = logprob_gap(torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -1.0, 5.0]]),
                      torch.tensor([[1.0, 1.0, 0.0]]))
    assert gap["logprob_gap_kl"] == pytest.approx(0.4124063, abs=1e-6) and gap["logprob_gap_max"] == 1.0


def test_recomputed_old_logprobs_keep_the_ratio_at_one(parts, rl_run_template):
    """Forced on in fp32 (bf16 is refused on CPU): the old log-probs come from the training forward, the ratio
    still starts at 1 within 1e-5 and the sampler-vs-forward gap is float rounding; auto leaves fp32 alone."""
    from alignloop.config.base import load_config
    from alignloop.rl.ppo import ppo_iteration

    policy, reference, reward_model, tokenizer, _ = parts
    rm_path = rl_run_template / "rounds" / "001" / "reward" / "final"
    for setting in ("true", "auto"):
        cfg = load_config(PPOConfig, None, ["sampling.max_new_tokens=8", "ppo.epochs=1", "ppo.minibatches=2",
                                            f"ppo.recompute_logprobs={setting}"])
        state = ppo_state(policy, reference, critic_from_reward_model(rm_path),
                          RewardScorer(reward_model, tokenizer), tokenizer, cfg)
        torch.manual_seed(0)
        exp, stats = ppo_iteration(state, RL_PROMPTS, encode_prompts(tokenizer, RL_PROMPTS, 64), cfg)
        assert stats["ratio_dev"] < 1e-5
        if setting == "auto":
            assert "logprob_gap_kl" not in stats and "sampler_logprobs" not in exp.extra
            continue
        sampled, mask = exp.extra["sampler_logprobs"], exp.response_mask
        # The same bound as the ratio's: the two passes agree to float rounding, and k3 <= (max |log r|)^2 there.
        assert stats["logprob_gap_max"] == pytest.approx(float(((sampled - exp.logprobs) * mask).abs().max()))
        assert stats["logprob_gap_max"] < 1e-5 and 0 <= stats["logprob_gap_kl"] <= stats["logprob_gap_max"] ** 2


def test_reward_clip_share_and_shaping_by_hand(rl_run_template):
    from alignloop.rl.rollout import clipped_share, shape_rewards

    reward_model = load_reward_model(rl_run_template / "rounds" / "001" / "reward" / "final", "cpu")
    assert (reward_model.stats.mean, reward_model.stats.std) == (0.1, 2.0)
    cfg = PPOConfig().reward  # normalised, clip 5, missing-EOS penalty 1
    # normalised: (s - 0.1) / 2 = [0, 5.05, -5.0, 5.45]: the second and the last lie beyond the clip
    scores = torch.tensor([0.1, 10.2, -9.9, 11.0])
    normalised = reward_model.normalise(scores)
    assert clipped_share(normalised, cfg) == 0.5
    ended = torch.tensor([True, True, True, False])
    # clipped, then the last (cut without EOS) loses the penalty: below the clip boundary
    assert shape_rewards(normalised, ended, cfg).tolist() == pytest.approx([0.0, 5.0, -5.0, 4.0])
    assert clipped_share(normalised, cfg.model_copy(update={"clip": None})) == 0.0
    # raw scores against the clip: 10.2, -9.9 and 11.0 beyond it
    assert clipped_share(scores, cfg) == 0.75
