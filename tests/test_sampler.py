"""The batched sampler and the log-prob recomputation that training relies on.

Tiny random-init Llama and GPT-2 models (hidden 64, 2 layers, vocab 128).
The key property: the log-probs recorded while sampling equal those a single
training forward recomputes on the full sequence, for left-padded batches of
prompts of different lengths, so the PPO ratio starts at exactly 1.
"""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from alignloop.errors import DataError
from alignloop.generation.logprobs import logprobs_from_logits, response_logits, sequence_logprobs
from alignloop.generation.sampler import Sampler, generate, sample_from_logits

PAD, BOS, EOS = 0, 1, 2
VOCAB = 128
# Many stop tokens make rows stop at different steps within a few tokens.
MANY_EOS = list(range(118, VOCAB))
PROMPTS = [[BOS, 5, 6, 7], [BOS, 8, 9, 10, 11, 12, 13], [BOS], [BOS, 20, 21], [BOS, 30, 31, 32, 33]]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(config).eval()


def make_llama():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return make_gpt2() if request.param == "gpt2" else make_llama()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_a_full_forward(model, temperature):
    batch = generate(model, PROMPTS, max_new_tokens=10, eos_token_id=MANY_EOS, pad_token_id=PAD,
                     temperature=temperature, generator=seeded(1))
    with torch.no_grad():
        recomputed = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length,
                                       temperature=temperature)
    assert recomputed.shape == batch.logprobs.shape
    assert torch.allclose(recomputed, batch.logprobs, atol=1e-5), (recomputed - batch.logprobs).abs().max()
    assert (batch.logprobs[batch.response_mask == 0] == 0).all()
    assert (batch.logprobs[batch.response_mask == 1] < 0).all()


def test_masks_cover_exactly_the_prompt_and_the_response(model):
    prompts = PROMPTS * 4
    batch = generate(model, prompts, max_new_tokens=10, eos_token_id=MANY_EOS, pad_token_id=PAD,
                     generator=seeded(1))
    width = batch.prompt_length
    assert width == max(len(p) for p in prompts)
    for row, prompt in enumerate(prompts):
        pad = width - len(prompt)
        # left-padded prompt
        assert batch.input_ids[row, :width].tolist() == [PAD] * pad + prompt
        assert batch.attention_mask[row, :width].tolist() == [0] * pad + [1] * len(prompt)
        # response: 1 up to and including the first EOS, then pad tokens with mask 0
        tokens = batch.response_ids[row].tolist()
        mask = batch.response_mask[row].tolist()
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n)
        assert tokens[n:] == [PAD] * (len(tokens) - n)
        assert not any(t in MANY_EOS for t in tokens[: n - 1])
        assert batch.ended_with_eos[row].item() == (tokens[n - 1] in MANY_EOS)
        if not batch.ended_with_eos[row]:
            assert n == 10
        assert batch.attention_mask[row, width:].tolist() == mask
        assert batch.input_ids[row, width:].tolist() == tokens
    lengths = batch.response_lengths.tolist()
    # rows stop independently: some stopped, at different steps, and some ran to the limit
    assert len(set(lengths)) > 1 and batch.ended_with_eos.any() and not batch.ended_with_eos.all()


def naive_greedy(model, prompt, max_new_tokens, eos):
    """One prompt, no padding, no cache: the full forward at every step."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(token)
            ids.append(token)
            if token == eos:
                break
    return out


def test_top_k_1_is_greedy_argmax_step_by_step(model):
    batch = generate(model, PROMPTS, max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD, top_k=1)
    for row, prompt in enumerate(PROMPTS):
        assert batch.response_token_lists()[row] == naive_greedy(model, prompt, 8, EOS)


def test_a_seeded_generator_reproduces_the_sample(model):
    def draw(seed):
        return generate(model, PROMPTS, 8, eos_token_id=MANY_EOS, pad_token_id=PAD, generator=seeded(seed))

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first.input_ids, again.input_ids) and torch.equal(first.logprobs, again.logprobs)
    assert not torch.equal(first.input_ids, other.input_ids)


def test_min_new_tokens_holds_back_eos(model):
    batch = generate(model, PROMPTS, 10, eos_token_id=MANY_EOS, pad_token_id=PAD, min_new_tokens=4,
                     generator=seeded(1))
    assert (batch.response_lengths >= 4).all()
    assert batch.ended_with_eos.any()
    # the log-probs are still those of the unfiltered policy
    with torch.no_grad():
        recomputed = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    assert torch.allclose(recomputed, batch.logprobs, atol=1e-5)


def test_all_rows_stopped_ends_the_loop_early(model):
    # nearly every token stops a row: every row ends at its first token
    batch = generate(model, PROMPTS, 10, eos_token_id=list(range(3, VOCAB)), pad_token_id=PAD, generator=seeded(1))
    assert batch.response_ids.shape == (len(PROMPTS), 1) and batch.ended_with_eos.all()


def test_stop_at_eos_false_runs_every_row_to_the_end(model):
    batch = generate(model, PROMPTS, 6, eos_token_id=MANY_EOS, pad_token_id=PAD, stop_at_eos=False,
                     generator=seeded(1))
    assert batch.response_mask.all() and batch.response_ids.shape == (len(PROMPTS), 6)
    last_is_eos = [ids[-1] in MANY_EOS for ids in batch.response_ids.tolist()]
    assert batch.ended_with_eos.tolist() == last_is_eos


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.3), (5, 0.5)])
def test_top_k_and_top_p_only_draw_allowed_tokens(model, top_k, top_p):
    batch = generate(model, PROMPTS, 6, eos_token_id=EOS, pad_token_id=PAD, top_k=top_k, top_p=top_p,
                     generator=seeded(3))
    with torch.no_grad():
        logits = response_logits(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    probs = logits.softmax(-1)
    chosen = probs.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    # rank of the drawn token (0 = most likely) and the mass of tokens more likely than it
    rank = (probs > chosen.unsqueeze(-1)).sum(-1)
    mass_before = (probs * (probs > chosen.unsqueeze(-1))).sum(-1)
    valid = batch.response_mask.bool()
    if top_k:
        assert (rank[valid] < top_k).all()
    if top_p < 1.0:
        # in the nucleus: the mass of the more likely tokens was still below top_p
        assert (mass_before[valid] < top_p + 1e-6).all()
    # recorded log-probs are those of the full, unfiltered distribution
    assert torch.allclose(chosen[valid].log(), batch.logprobs[valid], atol=1e-5)


def test_the_models_mode_is_restored_and_sampling_has_dropout_off():
    model = make_gpt2().train()  # GPT-2 has dropout 0.1
    batch = generate(model, PROMPTS, 6, eos_token_id=EOS, pad_token_id=PAD, generator=seeded(1))
    assert model.training
    model.eval()
    with torch.no_grad():
        recomputed = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    assert torch.allclose(recomputed, batch.logprobs, atol=1e-5)


def test_left_padding_does_not_change_logprobs(model):
    batch = generate(model, PROMPTS, 6, eos_token_id=EOS, pad_token_id=PAD, generator=seeded(2))
    with torch.no_grad():
        padded = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
        for row, prompt in enumerate(PROMPTS):
            alone = torch.tensor([prompt + batch.response_token_lists()[row]])
            single = sequence_logprobs(model, alone, torch.ones_like(alone), len(prompt))
            n = single.shape[1]
            assert torch.allclose(single[0], padded[row, :n], atol=1e-5)


def test_sequence_logprobs_with_a_start_per_row(model):
    # prompt + response packed from column 0 and right-padded: each row's response starts elsewhere
    prompts, responses = [[BOS, 5, 6], [BOS, 7, 8, 9, 10], [BOS, 11]], [[40, 41, 42], [43], [44, 45]]
    rows = [p + r for p, r in zip(prompts, responses)]
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    starts = torch.tensor([len(p) for p in prompts])
    with torch.no_grad():
        packed = sequence_logprobs(model, input_ids, attention_mask, starts)
        assert packed.shape == (3, width - 2)
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            alone = torch.tensor([prompt + response])
            single = sequence_logprobs(model, alone, torch.ones_like(alone), len(prompt))[0]
            assert torch.allclose(packed[row, : len(response)], single, atol=1e-5)
            assert (packed[row, len(response):] == 0).all()


def test_sampler_binds_settings():
    model = make_llama()
    sampler = Sampler(max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD, top_k=1)
    batch = sampler(model, PROMPTS[:2])
    assert torch.equal(batch.response_ids,
                       generate(model, PROMPTS[:2], 5, EOS, PAD, top_k=1).response_ids)


def test_bad_prompts_are_refused():
    model = make_llama()
    with pytest.raises(DataError, match="prompt 1 is empty"):
        generate(model, [[BOS], []], 4, EOS, PAD)
    with pytest.raises(DataError):
        generate(model, [], 4, EOS, PAD)
    with pytest.raises(DataError, match="64 positions"):  # max_position_embeddings = 64
        generate(model, [[BOS] * 60], 5, EOS, PAD)


def test_sample_from_logits_draws_the_softmax_distribution():
    # 40000 rows of the same distribution (0.1, 0.2, 0.3, 0.4): frequencies within 0.01
    # (standard error at most sqrt(0.25 / 40000) = 0.0025).
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().expand(40000, 4)
    tokens, logprobs = sample_from_logits(logits, generator=seeded(0))
    frequencies = torch.bincount(tokens, minlength=4) / 40000
    assert torch.allclose(frequencies, probs, atol=0.01)
    assert torch.allclose(logprobs, probs.log()[tokens], atol=1e-6)
    # temperature 2: softmax(log p / 2) is proportional to sqrt(p)
    tokens, logprobs = sample_from_logits(logits, temperature=2.0, generator=seeded(1))
    tempered = probs.sqrt() / probs.sqrt().sum()
    assert torch.allclose(torch.bincount(tokens, minlength=4) / 40000, tempered, atol=0.01)
    assert torch.allclose(logprobs, tempered.log()[tokens], atol=1e-6)


def test_sample_from_logits_across_blocks_of_a_larger_vocabulary():
    # mass on tokens either side of the sampler's block edges (256, 512) and on the last one
    probs = torch.full((600,), 0.2 / 596)
    probs[[255, 256, 511, 599]] = torch.tensor([0.1, 0.3, 0.25, 0.15])
    tokens, _ = sample_from_logits(probs.log().expand(10000, 600), generator=seeded(0))
    frequencies = torch.bincount(tokens, minlength=600) / 10000
    assert torch.allclose(frequencies[[255, 256, 511, 599]], probs[[255, 256, 511, 599]], atol=0.015)
    assert frequencies.sum().item() == pytest.approx(1.0)


def test_sample_from_logits_never_draws_banned_or_impossible_tokens():
    logits = torch.tensor([0.0, float("-inf"), 0.0, 5.0]).expand(5000, 4)
    tokens, logprobs = sample_from_logits(logits, generator=seeded(0), banned_token_ids=torch.tensor([3]))
    assert set(tokens.tolist()) == {0, 2}
    # the log-prob is still that of the unbanned distribution: e^0 / (2 + e^5)
    assert torch.allclose(logprobs, torch.tensor(0.0) - torch.log(torch.tensor(2.0) + torch.tensor(5.0).exp()))


def test_logprobs_from_logits_matches_log_softmax():
    logits = torch.randn(2, 5, 17, generator=seeded(0))
    tokens = torch.randint(0, 17, (2, 5), generator=seeded(1))
    expected = logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, tokens), expected, atol=1e-6)
    half = logprobs_from_logits(logits.bfloat16(), tokens)
    assert half.dtype == torch.float32 and torch.allclose(half, expected, atol=0.05)


def test_a_rollout_can_be_trained_on():
    # tensors made under inference_mode cannot be saved for backward: the batch must hold normal tensors
    model = make_llama()
    batch = generate(model, PROMPTS, 4, EOS, PAD, generator=seeded(0))
    model.train()
    logprobs = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    (logprobs * batch.response_mask).sum().backward()
    assert model.lm_head.weight.grad is not None
