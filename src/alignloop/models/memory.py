"""Gradient checkpointing: keep fewer activations, recompute them in the backward pass.

Transformers checkpoints a decoder layer only while that layer is in training
mode. The RL stages keep every model in eval mode (dropout off, so the PPO
ratio starts at exactly 1), so `checkpointed_forward` marks just the decoder
layers as training for the duration of one forward pass: the layers then
checkpoint, while their dropout modules stay off.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


def _unwrap(model):
    from alignloop.generation.logprobs import unwrap_model  # imported late: logprobs imports this module

    return unwrap_model(model)


def enable_gradient_checkpointing(model) -> None:
    """Turn on transformers' gradient checkpointing (non-reentrant: works with frozen inputs, e.g. under LoRA)."""
    inner = _unwrap(model)
    if not getattr(inner, "supports_gradient_checkpointing", False):
        from alignloop.errors import ConfigError

        raise ConfigError(f"gradient_checkpointing: {type(inner).__name__} does not support it; turn it off")
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # newer transformers name it so (the old name warns)
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def checkpointed_forward(model) -> Iterator[None]:
    """Inside the block, a model in eval mode with checkpointing on checkpoints its layers all the same."""
    inner = _unwrap(model)
    # newer transformers call it is_activation_checkpointing (the old name warns)
    flag = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    if not getattr(inner, flag, False):
        yield
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in inner.modules()
              if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing and not m.training]
    for layer in layers:
        layer.training = True  # the layer alone (not `.train()`): its dropout children stay in eval mode
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False
