"""Per-token log-probabilities of responses under a causal LM.

This is the one place where rollouts (the sampler) and training (PPO, GRPO,
DPO, evaluation) agree on what "the log-prob of a response token" means:

- the distribution is ``softmax(logits / temperature)`` over the whole
  vocabulary (no top-k / top-p filtering: that is a property of how we *chose*
  tokens, not of the policy the gradient is taken through);
- position ids are computed from the attention mask, so a left-padded prompt
  gets positions 0, 1, ... from its first real token, exactly as the sampler
  gave it; without this, learned (GPT-2) or rotary (Llama) position encodings
  would see different positions in the two passes and the PPO ratio would not
  start at 1.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

from alignloop.generation.fused_logprobs import token_logprobs_and_entropy

__all__ = [
    "position_ids_from_attention_mask",
    "logprobs_from_logits",
    "response_logits",
    "response_tokens_and_mask",
    "sequence_logprobs",
    "unwrap_model",
]


def position_ids_from_attention_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only.

    attention_mask: [B, L] (1 = real token, 0 = padding). Returns [B, L] long:
    the number of real tokens before each position; padding on the left gets 0
    (its value is irrelevant: it is masked out of attention).
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp_(min=0)


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token] for every position.

    logits: [..., V]; tokens: [...] (long). Returns [...] in float32 (or
    float64 when the logits are). Computed as ``logit[token] - logsumexp``
    with one [..., V] buffer for forward and backward
    (``alignloop.generation.fused_logprobs``), so no log-softmax tensor is
    built and kept for autograd beside the logits themselves. Half-precision
    logits are upcast to float32 one row at a time (a bf16 log-softmax loses
    too much precision), which bounds the peak memory of scoring without
    gradients.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} do not match")
    if logits.dtype in (torch.float32, torch.float64):
        return token_logprobs_and_entropy(logits, tokens, with_entropy=False)[0]
    rows = [
        torch.log_softmax(row.float(), dim=-1).gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        for row, row_tokens in zip(logits, tokens)
    ]
    return torch.stack(rows)


@functools.lru_cache(maxsize=64)
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def unwrap_model(model):
    """The Hugging Face model inside wrappers (DDP's ``.module``, peft's base model)."""
    while True:
        if hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        elif isinstance(model, torch.nn.Module) and isinstance(getattr(model, "module", None), torch.nn.Module):
            inner = model.module
        else:
            return model
        if inner is model:
            return model
        model = inner


def _model_kwargs(model, *, use_cache: bool, logits_to_keep: int = 0, cache=None) -> dict:
    """Keyword names differ across transformers versions (``cache`` replaced
    ``past_key_values`` in 5.x; ``num_logits_to_keep`` became
    ``logits_to_keep``); pass whichever the underlying model's forward accepts
    (wrappers such as peft pass keyword arguments through)."""
    params = _forward_parameters(type(unwrap_model(model)))
    kwargs: dict = {"use_cache": use_cache}
    if cache is not None:
        kwargs["cache" if "cache" in params else "past_key_values"] = cache
    if logits_to_keep:
        if "logits_to_keep" in params:
            kwargs["logits_to_keep"] = logits_to_keep
        elif "num_logits_to_keep" in params:
            kwargs["num_logits_to_keep"] = logits_to_keep
    return kwargs


def response_logits(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_start: int | Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """Logits that predict each response token, from one forward pass.

    input_ids, attention_mask: [B, L], prompt then response (the sampler's
    layout: left-padded prompt of width P, right-padded response).
    response_start: the position of the first response token, either one int
    for the batch (the sampler's ``prompt_length``) or a [B] tensor when each
    row's response starts elsewhere (prompt and response packed without a
    fixed prompt width).
    Returns [B, T_resp, V] = model logits / temperature, where T_resp is
    ``L - response_start`` (int) or ``L - min(response_start)`` (tensor; row i's
    response is left-aligned, positions past the row's end repeat the last
    logits and must be masked by the caller). The lm_head runs only on the
    positions that are needed.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    length = input_ids.shape[1]
    first = int(response_start.min()) if isinstance(response_start, Tensor) else int(response_start)
    if not 1 <= first < length:
        raise ValueError(f"response_start {first} must be in [1, {length - 1}] (a response needs a prompt before it)")
    n_predict = length - first
    from alignloop.models.memory import checkpointed_forward

    kwargs = _model_kwargs(model, use_cache=False, logits_to_keep=n_predict + 1)
    if "logits_to_keep" in kwargs:
        # The logits at position j predict token j + 1: ask for exactly positions first-1 .. L-2. Slicing
        # them out of n_predict + 1 positions instead would cost a [B, T, V] zero-fill and copy in backward.
        kwargs["logits_to_keep"] = torch.arange(first - 1, length - 1, device=input_ids.device)
    with checkpointed_forward(model):  # a no-op unless gradient checkpointing is on
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_attention_mask(attention_mask),
            **kwargs,
        )
    logits = out.logits
    if logits.shape[1] != n_predict:  # the model kept a count of last positions (or all of them)
        logits = logits[:, -(n_predict + 1):-1, :]
    if isinstance(response_start, Tensor):
        offsets = (response_start.to(logits.device) - first).view(-1, 1)
        index = (offsets + torch.arange(n_predict, device=logits.device)).clamp_(max=n_predict - 1)
        logits = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def response_tokens_and_mask(
    input_ids: Tensor, attention_mask: Tensor, response_start: int | Tensor
) -> tuple[Tensor, Tensor]:
    """The response tokens and their mask, aligned like ``response_logits``.

    Returns ([B, T_resp] long, [B, T_resp] long); positions past a row's end
    (tensor ``response_start``) have mask 0.
    """
    length = input_ids.shape[1]
    if not isinstance(response_start, Tensor):
        return input_ids[:, response_start:], attention_mask[:, response_start:].long()
    starts = response_start.to(input_ids.device).view(-1, 1)
    n_predict = length - int(starts.min())
    index = starts + torch.arange(n_predict, device=input_ids.device)
    inside = index < length
    index = index.clamp(max=length - 1)
    tokens = input_ids.gather(1, index)
    mask = attention_mask.gather(1, index).long() * inside.long()
    return tokens, mask


def sequence_logprobs(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_start: int | Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token log-probs of the response tokens, in one forward pass.

    Same arguments as ``response_logits``. Returns [B, T_resp] float32:
    log softmax(logits / temperature)[token] for each response token, 0 where
    the response is padding (attention_mask 0). Gradients flow when called
    outside ``torch.no_grad``; the sampler's ``RolloutBatch.logprobs`` equal
    this (under ``no_grad``, dropout off) to float rounding.
    """
    logits = response_logits(model, input_ids, attention_mask, response_start, temperature)
    tokens, mask = response_tokens_and_mask(input_ids, attention_mask, response_start)
    if logits.dtype in (torch.float32, torch.float64):  # the logits are ours: they become the working buffer
        logprobs = token_logprobs_and_entropy(logits, tokens, with_entropy=False, overwrite=True)[0]
    else:
        logprobs = logprobs_from_logits(logits, tokens)
    return logprobs * mask.to(logprobs.dtype)
