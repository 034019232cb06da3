"""Gradient checkpointing: layers recompute in the backward pass, in RL's eval mode too, same gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignloop.generation.logprobs import sequence_logprobs
from alignloop.models.lora import LoraSettings, with_lora
from alignloop.models.memory import enable_gradient_checkpointing


def _gradients_and_attention_calls(model, input_ids):
    calls = []
    attention = model.get_base_model().model.layers[0].self_attn if hasattr(model, "get_base_model") \
        else model.model.layers[0].self_attn
    hook = attention.register_forward_hook(lambda *args: calls.append(1))
    model.zero_grad(set_to_none=True)
    sequence_logprobs(model, input_ids, torch.ones_like(input_ids), 3).sum().backward()
    hook.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return grads, len(calls)


@pytest.mark.parametrize("lora", [False, True])
def test_checkpointed_layers_recompute_in_eval_mode_with_the_same_gradients(lora):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = with_lora(LlamaForCausalLM(config), LoraSettings(r=4), "causal_lm") if lora else LlamaForCausalLM(config)
    if lora:  # B starts at 0; move it so every adapter gets a gradient
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.1)
    model.eval()  # as in PPO: dropout off
    input_ids = torch.randint(3, 60, (2, 10))
    plain, plain_calls = _gradients_and_attention_calls(model, input_ids)
    enable_gradient_checkpointing(model)
    model.eval()
    checkpointed, checkpointed_calls = _gradients_and_attention_calls(model, input_ids)
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the layer ran again in the backward pass
    assert plain.keys() == checkpointed.keys() and plain
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)
    assert not any(m.training for m in model.modules())  # eval mode is left as it was
