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
- attention through ``scaled_dot_product_attention`` on the cache's
  slices, with that mask (at one query row per step, torch's fused CPU
  kernel is faster than two batched products and a softmax);
- the LM head on the last position only;
- on CPU in float32, the decoding steps' weight products through oneDNN
  on weights reordered once per rollout for its batch size (``ReorderedProduct``;
  the weights do not change during a rollout), with GPT-2's GELU fused into
  its MLP's first product, and its LayerNorms on one thread (``_on_one_thread``).

The arithmetic is the one the model's own forward does, so the log-probs the
sampler records match ``sequence_logprobs`` to float rounding (the tests pin
1e-5 against it). Architectures other than these, or models whose attention
is not plain full causal attention (sliding windows, prompt-learning adapters)
get ``None``, and the sampler uses the model's own forward instead.

Calling the submodules, rather than reading their weights, keeps LoRA layers
and forward hooks in force. The exceptions read the weights of plain
``nn.Linear`` (and GPT-2 ``Conv1D``) layers only, copied once per rollout so
they never go stale: Llama's q/k/v projections (one product on their
concatenated weights instead of three, and likewise its MLP's gate and up),
and the reordered oneDNN weights. A LoRA layer or a hooked module is always
called as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from alignloop.generation.logprobs import unwrap_model
from alignloop.models.onednn_products import ReorderedProduct, linear_weight, onednn_available

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
    """Keys and values of every layer, [B, H_kv, capacity, D], written in place."""

    def __init__(self, layers: int, batch: int, heads: int, capacity: int, head_dim: int, like: Tensor):
        self.keys = [like.new_empty(batch, heads, capacity, head_dim) for _ in range(layers)]
        self.values = [like.new_empty(batch, heads, capacity, head_dim) for _ in range(layers)]

    def append(self, layer: int, start: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Store [B, H_kv, S, D] at positions start.. and return (keys, values) [B, H_kv, L, D] up to them."""
        end = start + key.shape[2]
        self.keys[layer][:, :, start:end].copy_(key)
        self.values[layer][:, :, start:end].copy_(value)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def _activation_dtype(weight: Tensor) -> torch.dtype:
    """The dtype a layer's products come out in: autocast's where it is on for the weight's device, else the
    weight's own."""
    kind = weight.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype


def _attention_bias(attention_mask: Tensor, new: int, dtype: torch.dtype) -> Tensor:
    """Additive bias [B, 1, S, L] in `dtype`: 0 where a query may attend, a very negative number elsewhere.

    Masked keys are padding, and for the S newest queries also any later key
    (causal). The most negative finite value of `dtype`, not -inf (nor
    float32's, which is -inf in half precision), keeps a left-padding query
    (which sees only padding) finite, as transformers does: its output is
    never attended to, but a NaN would leak through 0 * NaN in later layers.
    Built once per call, in the dtype of the queries, for every layer.
    """
    length = attention_mask.shape[1]
    allowed = attention_mask.bool()[:, None, None, :]
    if new > 1:
        query_positions = torch.arange(length - new, length, device=attention_mask.device).view(-1, 1)
        causal = torch.arange(length, device=attention_mask.device).view(1, -1) <= query_positions
        allowed = allowed & causal
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _attend(query: Tensor, keys: Tensor, values: Tensor, bias: Tensor, scaling: float) -> Tensor:
    """softmax(q k^T * scaling + bias) v, with grouped keys/values; returns [B, S, H * D].

    query [B, H, S, D], keys and values [B, H_kv, L, D] (H a multiple of H_kv), bias [B, 1, S, L].
    """
    batch, heads, new, dim = query.shape
    out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=bias, scale=scaling,
                                                           enable_gqa=heads != keys.shape[1])
    return out.transpose(1, 2).reshape(batch, new, heads * dim)


# ---------------------------------------------------------------------------
# The weight products of a decoding step


def _plain_weight(module: nn.Module) -> Optional[tuple[Tensor, Optional[Tensor]]]:
    """(weight [out, in], bias) of a plain nn.Linear or GPT-2 Conv1D without hooks; None for anything else."""
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    return linear_weight(module)


def _plus(module: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """residual + module(x): fused when the module is a oneDNN product."""
    if isinstance(module, ReorderedProduct):
        return module.plus
    return lambda x, residual: residual + module(x)


def _stacked(modules: tuple[nn.Module, ...]) -> Optional[tuple[Tensor, Optional[Tensor]]]:
    """(weight, bias) of plain linears stacked (their outputs side by side), or None when any is not plain or
    only some have a bias."""
    found = [_plain_weight(m) for m in modules]
    if any(f is None for f in found):
        return None
    weights, biases = [w for w, _ in found], [b for _, b in found]
    if any(b is None for b in biases) and any(b is not None for b in biases):
        return None
    if len(found) == 1:
        return weights[0], biases[0]
    return torch.cat(weights), (torch.cat(biases) if biases[0] is not None else None)


def _decode_product(modules: tuple[nn.Module, ...], rows: int, gelu_tanh: bool = False) -> Optional[ReorderedProduct]:
    """One oneDNN product for `modules` (stacked), or None when they are not plain float32 CPU linears, CPU
    autocast is on, or oneDNN is missing."""
    # Under CPU autocast the activations arrive in half precision, which these float32 weights do not take.
    stacked = _stacked(modules) if onednn_available() and not torch.is_autocast_enabled("cpu") else None
    if stacked is None or stacked[0].device.type != "cpu" or stacked[0].dtype != torch.float32:
        return None
    try:
        return ReorderedProduct(*stacked, rows, gelu_tanh)
    except RuntimeError:  # a oneDNN build without this kernel for this CPU: the module's own product serves
        return None


def _on_one_thread(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """``module(x)`` on one CPU thread, for a decoding step's small elementwise ops (a LayerNorm over [B, 1, D]).

    torch splits LayerNorm's rows over its threads, and waking a sleeping thread (``OMP_WAIT_POLICY=PASSIVE``,
    or a CPU shared with other work) takes longer than the whole norm does on one: 64 us against 9 us for
    [64, 1, 256] here. Only CPU modules; the thread count is restored at once.
    """
    def call(x: Tensor) -> Tensor:
        threads = torch.get_num_threads()
        if threads == 1 or x.device.type != "cpu":
            return module(x)
        torch.set_num_threads(1)
        try:
            return module(x)
        finally:
            torch.set_num_threads(threads)
    return call


def _is_tanh_gelu(act: nn.Module) -> bool:
    """The tanh-approximated GELU: transformers' `gelu_new` (six elementwise ops in Python), or torch's one-kernel
    version that `alignloop.rl.state.fuse_activations` puts in its place for RL; the same function."""
    return type(act).__name__ == "NewGELUActivation" or (type(act) is nn.GELU and act.approximate == "tanh")


@dataclass
class _GPT2Ops:
    """One block's norms and four weight products; `mlp_in` includes the activation, `out` and `mlp_out` add
    the residual: f(x, residual)."""

    norm_1: Callable[[Tensor], Tensor]
    qkv: Callable[[Tensor], Tensor]
    out: Callable[[Tensor, Tensor], Tensor]
    norm_2: Callable[[Tensor], Tensor]
    mlp_in: Callable[[Tensor], Tensor]
    mlp_out: Callable[[Tensor, Tensor], Tensor]

    @staticmethod
    def of_modules(block) -> "_GPT2Ops":
        """The block's own modules (any batch; LoRA and hooks in force)."""
        mlp = block.mlp
        if _is_tanh_gelu(mlp.act):
            def mlp_in(x: Tensor) -> Tensor:
                return torch.nn.functional.gelu(mlp.c_fc(x), approximate="tanh")
        else:
            def mlp_in(x: Tensor) -> Tensor:
                return mlp.act(mlp.c_fc(x))
        return _GPT2Ops(block.ln_1, block.attn.c_attn, _plus(block.attn.c_proj), block.ln_2, mlp_in,
                        _plus(mlp.c_proj))

    @staticmethod
    def for_decoding(block, rows: int, own: "_GPT2Ops") -> "_GPT2Ops":
        """oneDNN products where the layer allows, `own` (the block's modules) elsewhere."""
        mlp = block.mlp
        if _is_tanh_gelu(mlp.act):
            mlp_in = _decode_product((mlp.c_fc,), rows, gelu_tanh=True) or own.mlp_in
        else:
            fc = _decode_product((mlp.c_fc,), rows)
            mlp_in = (lambda x: mlp.act(fc(x))) if fc is not None else own.mlp_in
        return _GPT2Ops(_on_one_thread(block.ln_1),
                        _decode_product((block.attn.c_attn,), rows) or own.qkv,
                        _plus(_decode_product((block.attn.c_proj,), rows) or block.attn.c_proj),
                        _on_one_thread(block.ln_2),
                        mlp_in,
                        _plus(_decode_product((mlp.c_proj,), rows) or mlp.c_proj))


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
        self.dtype = _activation_dtype(head.weight)
        self.length = 0
        self.prefill_ops = [_GPT2Ops.of_modules(block) for block in self.body.h]
        self.decode_ops = [_GPT2Ops.for_decoding(block, batch, own) for block, own in zip(self.body.h,
                                                                                          self.prefill_ops)]
        self.decode_head = _decode_product((head,), batch) or head
        self.decode_norm = _on_one_thread(self.body.ln_f)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        batch, new = input_ids.shape
        decoding = new == 1
        all_ops = self.decode_ops if decoding else self.prefill_ops
        hidden = self.body.wte(input_ids) + self.body.wpe(position_ids)
        bias = _attention_bias(attention_mask, new, self.dtype)
        for index, (block, ops) in enumerate(zip(self.body.h, all_ops)):
            attn = block.attn
            query, key, value = ops.qkv(ops.norm_1(hidden)).split(attn.embed_dim, dim=2)
            shape = (batch, new, self.heads, self.head_dim)
            query, key, value = (t.view(shape).transpose(1, 2) for t in (query, key, value))
            keys, values = self.cache.append(index, self.length, key, value)
            hidden = ops.out(_attend(query, keys, values, bias, attn.scaling), hidden)
            hidden = ops.mlp_out(ops.mlp_in(ops.norm_2(hidden)), hidden)
        self.length += new
        last = (self.decode_norm if decoding else self.body.ln_f)(hidden[:, -1])
        return (self.decode_head if decoding else self.head)(last)


# ---------------------------------------------------------------------------
# Llama, Mistral, Qwen2


@dataclass
class _LlamaOps:
    """One layer's products: x -> (q, k, v); out and mlp add the residual: f(x, residual)."""

    qkv: Callable[[Tensor], tuple[Tensor, ...]]
    out: Callable[[Tensor, Tensor], Tensor]
    mlp: Callable[[Tensor, Tensor], Tensor]

    @staticmethod
    def of_modules(layer, sizes: tuple[int, int, int]) -> "_LlamaOps":
        """The layer's modules; q/k/v as one product on their stacked weights when all three are plain."""
        attn = layer.self_attn
        stacked = _stacked((attn.q_proj, attn.k_proj, attn.v_proj))
        if stacked is None:
            def qkv(x: Tensor) -> tuple[Tensor, ...]:
                return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        else:
            def qkv(x: Tensor) -> tuple[Tensor, ...]:
                return torch.nn.functional.linear(x, *stacked).split(sizes, dim=-1)
        return _LlamaOps(qkv, _plus(attn.o_proj), _plus(layer.mlp))

    @staticmethod
    def for_decoding(layer, sizes: tuple[int, int, int], rows: int, own: "_LlamaOps") -> "_LlamaOps":
        """oneDNN products where the layers allow (the gated MLP's gate and up as one), `own` (the layer's
        modules) elsewhere."""
        attn, mlp = layer.self_attn, layer.mlp
        fused_qkv = _decode_product((attn.q_proj, attn.k_proj, attn.v_proj), rows)
        gated = all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))
        gate_up = _decode_product((mlp.gate_proj, mlp.up_proj), rows) if gated else None
        down = _decode_product((mlp.down_proj,), rows) if gated else None
        mlp_fn = own.mlp
        if gate_up is not None and down is not None:
            width = mlp.gate_proj.out_features

            def mlp_fn(x: Tensor, residual: Tensor) -> Tensor:
                gate, up = gate_up(x).split(width, dim=-1)
                return down.plus(mlp.act_fn(gate) * up, residual)
        return _LlamaOps((lambda x: fused_qkv(x).split(sizes, dim=-1)) if fused_qkv is not None else own.qkv,
                         _plus(_decode_product((attn.o_proj,), rows) or attn.o_proj), mlp_fn)


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
        self.dtype = _activation_dtype(head.weight)
        sizes = (self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim)
        self.prefill_ops = [_LlamaOps.of_modules(layer, sizes) for layer in self.body.layers]
        self.decode_ops = [_LlamaOps.for_decoding(layer, sizes, batch, own)
                           for layer, own in zip(self.body.layers, self.prefill_ops)]
        self.decode_head = _decode_product((head,), batch) or head
        self.length = 0

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        batch, new = input_ids.shape
        decoding = new == 1
        all_ops = self.decode_ops if decoding else self.prefill_ops
        hidden = self.body.embed_tokens(input_ids)
        cos, sin = self.body.rotary_emb(hidden, position_ids)
        bias = _attention_bias(attention_mask, new, self.dtype)
        for index, (layer, ops) in enumerate(zip(self.body.layers, all_ops)):
            attn = layer.self_attn
            query, key, value = ops.qkv(layer.input_layernorm(hidden))
            query = query.view(batch, new, self.heads, self.head_dim).transpose(1, 2)
            key = key.view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            value = value.view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            query, key = self.rotate(query, key, cos, sin)
            keys, values = self.cache.append(index, self.length, key, value)
            hidden = ops.out(_attend(query, keys, values, bias, attn.scaling), hidden)
            hidden = ops.mlp(layer.post_attention_layernorm(hidden), hidden)
        self.length += new
        last = self.body.norm(hidden[:, -1])
        return (self.decode_head if decoding else self.head)(last)
