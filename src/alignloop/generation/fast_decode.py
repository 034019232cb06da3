"""A lean prefill-and-decode path for GPT-2 and Llama-family causal LMs.

At rollout sizes (tens of rows, widths of a few hundred) one decoding step is
many small operations, and a transformers forward spends more time around
them than in them: building 4-D attention masks, cache objects, dispatching
scaled-dot-product attention for a single query row. ``lean_stepper`` runs
the same model through its own submodules (embeddings, norms, projections,
MLPs, LM head: the very weights training updates, no copies of them) and
replaces only the plumbing around them:

- a key/value buffer per layer, allocated once for prompt + new tokens;
- an additive padding mask built from the attention mask once per call,
  shared by all layers;
- attention written out as two batched matmuls and a softmax, which for a
  single query row is a few kernels instead of a flash-attention launch;
- the LM head on the last position only.

The arithmetic is the one the model's own forward does, so the log-probs the
sampler records match ``sequence_logprobs`` to float rounding (the tests pin
1e-5 against it). Architectures other than these, or models whose attention
is not plain full causal attention (sliding windows, prompt-learning adapters)
get ``None``, and the sampler uses the model's own forward instead.

Calling the submodules, rather than reading their weights, keeps LoRA layers
and forward hooks in force. The one exception is Llama's q/k/v projections:
when all three are plain ``nn.Linear``, one matmul on their concatenated
weights (built once per rollout, so it never goes stale) replaces three.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from alignloop.generation.logprobs import unwrap_model

__all__ = ["Stepper", "lean_stepper"]

# (input_ids [B, S], attention_mask [B, L], position_ids [B, S]) -> logits [B, V] of the last position.
# The cache holds L - S earlier positions; the mask covers them and the S new ones.
Stepper = Callable[[Tensor, Tensor, Tensor], Tensor]

_LLAMA_FAMILY = ("llama", "mistral", "qwen2")


def _is_prompt_learning_adapter(model) -> bool:
    """peft prefix/prompt tuning adds virtual tokens in its own forward, which this path would skip."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return False
    return any(getattr(config, "is_prompt_learning", False) for config in configs.values())


def _full_attention_only(config, width: int) -> bool:
    """No layer restricted to a sliding window shorter than the rollout (that mask is not built here)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        return False
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < width:
        return False
    return True


def lean_stepper(model, batch: int, capacity: int) -> Optional[Stepper]:
    """A decoding function for ``model`` with room for ``capacity`` positions, or None if unsupported.

    Supported: GPT-2 (``GPT2LMHeadModel``) and the Llama layout (Llama,
    Mistral, Qwen2 ``*ForCausalLM``), bare or inside DDP / LoRA wrappers.
    Call the result under ``torch.inference_mode`` with the model in eval
    mode (dropout is not applied).
    """
    if _is_prompt_learning_adapter(model):
        return None
    inner = unwrap_model(model)
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) or not _full_attention_only(config, capacity):
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        return None
    if model_type == "gpt2" and hasattr(inner, "transformer") and not getattr(config, "add_cross_attention", False):
        return _GPT2Stepper(inner, head, batch, capacity)
    if model_type in _LLAMA_FAMILY and hasattr(inner, "model") and hasattr(inner.model, "rotary_emb"):
        return _LlamaStepper(inner, head, batch, capacity)
    return None


# ---------------------------------------------------------------------------
# Shared pieces: the cache, the mask, attention


class _KVCache:
    """Keys and values of every layer, written in place.

    Keys are stored transposed, [B, H_kv, D, capacity], values as
    [B, H_kv, capacity, D]: both attention products then read their operand
    in the layout a batched matmul wants, with no copy (at one query row per
    step, this halves the time of q k^T against a [B, H, L, D] key buffer).
    """

    def __init__(self, layers: int, batch: int, heads: int, capacity: int, head_dim: int, like: Tensor):
        self.keys_t = [like.new_empty(batch, heads, head_dim, capacity) for _ in range(layers)]
        self.values = [like.new_empty(batch, heads, capacity, head_dim) for _ in range(layers)]

    def append(self, layer: int, start: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Store [B, H_kv, S, D] at positions start.. and return (keys^T [.., D, L], values [.., L, D]) up to them."""
        end = start + key.shape[2]
        self.keys_t[layer][..., start:end].copy_(key.transpose(-1, -2))
        self.values[layer][:, :, start:end].copy_(value)
        return self.keys_t[layer][..., :end], self.values[layer][:, :, :end]


def _attention_bias(attention_mask: Tensor, new: int) -> Tensor:
    """Additive float32 bias [B, 1, S, L]: 0 where a query may attend, a very negative number elsewhere.

    Masked keys are padding, and for the S newest queries also any later key
    (causal). The most negative finite value, not -inf, keeps a left-padding
    query (which sees only padding) finite, as transformers does: its output
    is never attended to, but a NaN would leak through 0 * NaN in later layers.
    """
    length = attention_mask.shape[1]
    allowed = attention_mask.bool()[:, None, None, :]
    if new > 1:
        query_positions = torch.arange(length - new, length, device=attention_mask.device).view(-1, 1)
        causal = torch.arange(length, device=attention_mask.device).view(1, -1) <= query_positions
        allowed = allowed & causal
    zero = torch.zeros((), dtype=torch.float32, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(torch.float32).min)


def _attend(query: Tensor, keys_t: Tensor, value: Tensor, bias: Tensor, scaling: float) -> Tensor:
    """softmax(q k^T * scaling + bias) v, with grouped keys/values.

    query [B, H, S, D], keys_t [B, H_kv, D, L], value [B, H_kv, L, D] (H a multiple of H_kv),
    bias [B, 1, S, L]. Returns [B, S, H * D]. The G = H / H_kv query heads of
    a group are stacked along the row axis, so keys are never repeated.
    """
    batch, heads, new, dim = query.shape
    groups = heads // keys_t.shape[1]
    if groups > 1:
        query = query.reshape(batch, keys_t.shape[1], groups * new, dim)
        bias = bias.repeat(1, 1, groups, 1)
    # float32 scores: the bias's "very negative" float32 value would round to -inf in bfloat16
    scores = torch.matmul(query, keys_t).float().mul_(scaling).add_(bias)
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(weights, value).view(batch, heads, new, dim)
    return out.transpose(1, 2).reshape(batch, new, heads * dim)


# ---------------------------------------------------------------------------
# GPT-2


class _GPT2Stepper:
    """GPT-2: learned positions, fused c_attn (Conv1D), pre-norm blocks, tied LM head."""

    def __init__(self, model, head: nn.Linear, batch: int, capacity: int):
        self.body = model.transformer
        self.head = head
        config = model.config
        self.heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.cache = _KVCache(len(self.body.h), batch, self.heads, capacity, self.head_dim, head.weight)
        self.length = 0

    @staticmethod
    def _mlp(mlp, x: Tensor) -> Tensor:
        """The block's MLP; transformers' `gelu_new` (six elementwise ops in Python) as torch's one-kernel
        tanh-GELU, the same function (`alignloop.rl.state.fuse_activations` does this for training)."""
        if type(mlp.act).__name__ != "NewGELUActivation":
            return mlp(x)
        hidden = torch.nn.functional.gelu(mlp.c_fc(x), approximate="tanh")
        return mlp.c_proj(hidden)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        batch, new = input_ids.shape
        hidden = self.body.wte(input_ids) + self.body.wpe(position_ids)
        bias = _attention_bias(attention_mask, new)
        for index, block in enumerate(self.body.h):
            attn = block.attn
            query, key, value = attn.c_attn(block.ln_1(hidden)).split(attn.embed_dim, dim=2)
            shape = (batch, new, self.heads, self.head_dim)
            query, key, value = (t.view(shape).transpose(1, 2) for t in (query, key, value))
            keys_t, values = self.cache.append(index, self.length, key, value)
            hidden = hidden + attn.c_proj(_attend(query, keys_t, values, bias, attn.scaling))
            hidden = hidden + self._mlp(block.mlp, block.ln_2(hidden))
        self.length += new
        return self.head(self.body.ln_f(hidden[:, -1]))


# ---------------------------------------------------------------------------
# Llama, Mistral, Qwen2


class _LlamaStepper:
    """The Llama layout: rotary positions, grouped-query attention, RMSNorm, gated MLP."""

    def __init__(self, model, head: nn.Linear, batch: int, capacity: int):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.rotate = apply_rotary_pos_emb
        self.body = model.model
        self.head = head
        first = self.body.layers[0].self_attn
        self.head_dim = first.head_dim
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.cache = _KVCache(len(self.body.layers), batch, self.kv_heads, capacity, self.head_dim, head.weight)
        self.qkv = [self._fused_qkv(layer.self_attn) for layer in self.body.layers]
        self.length = 0

    @staticmethod
    def _fused_qkv(attn) -> Optional[tuple[Tensor, Optional[Tensor]]]:
        """One weight for the three projections when they are plain linears (else None: call each)."""
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        if any(type(p) is not nn.Linear for p in projections):
            return None
        biases = [p.bias for p in projections]
        if any(b is None for b in biases) and any(b is not None for b in biases):
            return None
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat(biases) if biases[0] is not None else None
        return weight, bias

    def _project(self, index: int, attn, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fused = self.qkv[index]
        if fused is None:
            return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        sizes = (self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim)
        return torch.nn.functional.linear(x, *fused).split(sizes, dim=-1)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        batch, new = input_ids.shape
        hidden = self.body.embed_tokens(input_ids)
        cos, sin = self.body.rotary_emb(hidden, position_ids)
        bias = _attention_bias(attention_mask, new)
        for index, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            query, key, value = self._project(index, attn, layer.input_layernorm(hidden))
            query = query.view(batch, new, self.heads, self.head_dim).transpose(1, 2)
            key = key.view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            value = value.view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            query, key = self.rotate(query, key, cos, sin)
            keys_t, values = self.cache.append(index, self.length, key, value)
            hidden = hidden + attn.o_proj(_attend(query, keys_t, values, bias, attn.scaling))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.length += new
        return self.head(self.body.norm(hidden[:, -1]))
