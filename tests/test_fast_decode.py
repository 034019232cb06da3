"""The lean decoding path against the model's own forward.

Tiny random-init models (hidden 64, 2 layers, vocab 128) of each supported
layout: GPT-2, Llama (grouped-query attention), Qwen2 (q/k/v biases), Mistral.
What must hold: with the same seed the lean path draws the same tokens as the
transformers forward, and its recorded log-probs equal a training forward's
(`sequence_logprobs`) within 1e-5, for left-padded prompts and rows that stop
at EOS at different steps; architectures it does not cover are left to the
model's own forward.
"""

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from alignloop.generation.fast_decode import lean_stepper
from alignloop.generation.logprobs import sequence_logprobs
from alignloop.generation.sampler import generate
from alignloop.models.onednn_products import ReorderedProduct

PAD, BOS, EOS = 0, 1, 2
VOCAB = 128
MANY_EOS = list(range(118, VOCAB))  # rows stop at different steps
PROMPTS = [[BOS, 5, 6, 7], [BOS, 8, 9, 10, 11, 12, 13], [BOS], [BOS, 20, 21], [BOS, 30, 31, 32, 33]]
SPECIAL = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
LLAMA_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, **SPECIAL)


pytestmark = pytest.mark.usefixtures("one_thread")


def build(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                                          **SPECIAL)).eval()
    if kind == "gpt2-relu":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                                          activation_function="relu", **SPECIAL)).eval()
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**LLAMA_SHAPE)).eval()
    if kind == "qwen2":  # q/k/v projections with biases
        return Qwen2ForCausalLM(Qwen2Config(**LLAMA_SHAPE)).eval()
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**LLAMA_SHAPE, sliding_window=64)).eval()
    raise ValueError(kind)


KINDS = ["gpt2", "gpt2-relu", "llama", "qwen2", "mistral"]


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    return build(request.param)


def draw(model, fast: bool, seed: int = 1, **settings):
    options = dict(max_new_tokens=10, eos_token_id=MANY_EOS, pad_token_id=PAD) | settings
    return generate(model, PROMPTS, generator=torch.Generator().manual_seed(seed), fast_decode=fast, **options)


def test_the_supported_layouts_get_the_lean_path(model):
    stepper = lean_stepper(model, batch=2, capacity=16)
    assert stepper is not None
    if torch.backends.mkldnn.is_available():  # CPU float32: the decoding products go through oneDNN
        assert isinstance(stepper.decode_head, ReorderedProduct)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_hooked_layer_is_called_as_it_is(kind):
    """A forward hook (here one that changes the output) stays in force at every step; the oneDNN product
    would skip it."""
    model = build(kind)
    layer = model.transformer.h[0].mlp.c_proj if kind == "gpt2" else model.model.layers[0].mlp.down_proj
    plain = draw(model, fast=True)
    calls = []

    def hook(module, inputs, output):
        calls.append(output.shape)
        return output * 1.5

    handle = layer.register_forward_hook(hook)
    try:
        hooked = draw(model, fast=True)
        steps = len(calls)
        reference = draw(model, fast=False)
    finally:
        handle.remove()
    assert steps == hooked.response_ids.shape[1]  # the prefill and every decoding step but the last
    assert torch.equal(hooked.response_ids, reference.response_ids)
    assert torch.allclose(hooked.logprobs, reference.logprobs, atol=1e-5)
    assert not torch.equal(hooked.response_ids, plain.response_ids) or not torch.allclose(hooked.logprobs,
                                                                                           plain.logprobs)


@pytest.mark.parametrize("settings", [{}, {"temperature": 0.7, "top_p": 0.9}, {"top_k": 5, "min_new_tokens": 4}])
def test_lean_and_transformers_forward_draw_the_same_rollout(model, settings):
    lean, reference = draw(model, True, **settings), draw(model, False, **settings)
    assert torch.equal(lean.input_ids, reference.input_ids)
    assert torch.equal(lean.attention_mask, reference.attention_mask)
    assert torch.equal(lean.ended_with_eos, reference.ended_with_eos)
    assert torch.allclose(lean.logprobs, reference.logprobs, atol=1e-5), (lean.logprobs - reference.logprobs).abs().max()
    # the rollout exercises what it should: left padding, and rows stopping at different steps
    assert len(set(map(len, PROMPTS))) > 1 and len(set(lean.response_lengths.tolist())) > 1


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_lean_logprobs_equal_the_training_forward(model, temperature):
    batch = draw(model, True, seed=3, temperature=temperature)
    with torch.no_grad():
        recomputed = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length,
                                       temperature=temperature)
    assert torch.allclose(recomputed, batch.logprobs, atol=1e-5), (recomputed - batch.logprobs).abs().max()


def test_lora_adapters_stay_in_force():
    peft = pytest.importorskip("peft")
    base = build("llama")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                             init_lora_weights=False)  # random B: the adapters change the output
    model = peft.get_peft_model(base, config).eval()
    lean, reference = draw(model, True), draw(model, False)
    assert torch.equal(lean.input_ids, reference.input_ids)
    assert torch.allclose(lean.logprobs, reference.logprobs, atol=1e-5)
    with torch.no_grad(), model.disable_adapter():
        without = sequence_logprobs(model, lean.input_ids, lean.attention_mask, lean.prompt_length)
    assert not torch.allclose(without, lean.logprobs, atol=1e-3)  # so the match above is not vacuous


def test_other_architectures_and_short_windows_fall_back():
    torch.manual_seed(0)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=64,
                                            **SPECIAL)).eval()
    assert lean_stepper(neox, batch=2, capacity=16) is None
    windowed = MistralForCausalLM(MistralConfig(**LLAMA_SHAPE | {"sliding_window": 8})).eval()
    assert lean_stepper(windowed, batch=2, capacity=16) is None
    assert lean_stepper(windowed, batch=2, capacity=8) is not None  # the window covers the whole rollout
    # the fallback still samples correctly
    batch = generate(neox, PROMPTS, 6, eos_token_id=EOS, pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        recomputed = sequence_logprobs(neox, batch.input_ids, batch.attention_mask, batch.prompt_length)
    assert torch.allclose(recomputed, batch.logprobs, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_bfloat16_model_stays_finite_with_left_padding(kind):
    # The padding bias is clamped to bfloat16's range (float32's most negative value would be -inf there, and a
    # left-padding query that sees only padding would turn into NaN and leak into later layers).
    model = build(kind).to(torch.bfloat16)
    batch = draw(model, True, seed=4)
    assert torch.isfinite(batch.logprobs).all()
    with torch.no_grad():
        recomputed = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    assert torch.allclose(recomputed, batch.logprobs, atol=0.1)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_float32_model_under_cpu_autocast_decodes(kind):
    # Under autocast the activations are bfloat16 while the weights stay float32: the oneDNN products (made
    # for float32 activations) must step aside, and the padding bias must follow the activations' dtype.
    model = build(kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch = draw(model, True, seed=4)
        recomputed = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    assert torch.isfinite(batch.logprobs).all()
    assert torch.allclose(recomputed.float(), batch.logprobs, atol=0.1)


def test_decoding_leaves_the_thread_count_as_it_was():
    # The decoding step runs its small norms on one thread (waking a second costs more than the norm) and
    # must give the caller back the count it had.
    model = build("gpt2")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fast, plain = draw(model, True), draw(model, False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.equal(fast.response_ids, plain.response_ids)
    assert torch.allclose(fast.logprobs, plain.logprobs, atol=1e-5)
