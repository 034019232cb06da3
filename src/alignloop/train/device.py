"""Where tensors live and at what precision: fp32 on CPU, bf16 autocast on CUDA.

`precision` (a stage's `train.precision` or `run.precision`):
- auto: bf16 autocast on CUDA, fp32 on CPU (where fp32 is both faster and exact);
- bf16: bf16 autocast, CUDA only: asking for it on a CPU is a one-line error
  rather than a silent fallback, so a run never reports figures of another
  precision than the one it was asked for;
- fp32: no autocast anywhere.

A stage sets its precision once for everything it runs (`precision_scope`);
every forward pass then asks `autocast(device)`. A context variable rather than
a parameter, because the forward passes live in shared code (sampler,
log-probs, reward scoring) that a dozen call sites reach.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

from alignloop.config.base import Precision
from alignloop.errors import ConfigError

__all__ = ["Precision", "active_precision", "autocast", "check_precision", "pick_device", "precision_scope",
           "route_cpu_products"]
_PRECISION: contextvars.ContextVar[str] = contextvars.ContextVar("alignloop_precision", default="auto")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` means CUDA when there is one, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def route_cpu_products(model: torch.nn.Module, device: torch.device) -> int:
    """Run `model`'s linear layers' float32 products through oneDNN when one process trains or scores it on CPU.

    `alignloop.models.onednn_products`: 5% less time a step for the small preset's pretraining and PPO on the
    2-core development machine. Launched processes keep the layers' own forward (their engine wraps the model
    and may replace its parameters). Returns how many layers were routed.
    """
    from alignloop.models.onednn_products import use_onednn_products
    from alignloop.train import distributed

    if device.type != "cpu" or distributed.world_size() != 1:
        return 0
    return use_onednn_products(model)


def check_precision(device: torch.device, precision: str, key: str = "train.precision") -> None:
    """A one-line `ConfigError` when `precision` cannot run on `device`."""
    if precision == "bf16" and device.type != "cuda":
        raise ConfigError(f"{key}=bf16 needs a CUDA device (this run is on {device.type}); use {key}=fp32 or auto")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key}=bf16: this GPU does not support bfloat16; use {key}=fp32")


@contextlib.contextmanager
def precision_scope(device: torch.device, precision: str, key: str = "train.precision") -> Iterator[None]:
    """Check `precision` against `device`, then make it the one `autocast` uses inside the block."""
    check_precision(device, precision, key)
    token = _PRECISION.set(precision)
    try:
        yield
    finally:
        _PRECISION.reset(token)


def active_precision(device: torch.device) -> str:
    """The precision `autocast(device)` runs at inside the current `precision_scope`: "bf16" or "fp32"."""
    return "bf16" if device.type == "cuda" and _PRECISION.get() != "fp32" else "fp32"


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA unless the stage asked for fp32; a no-op on CPU."""
    if enabled and active_precision(device) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
