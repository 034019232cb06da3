"""Several processes, one training run: torch.distributed through accelerate.

Launched by `torchrun --nproc_per_node N` or `accelerate launch --num_processes N`,
every process runs the same stage command. This module is all they need to
know about each other, so the training loops stay straight reads:

- who am I: `world_size`, `rank`, `is_main` (rank 0 writes checkpoints, the
  manifest, metrics and the console);
- my share: `local_slice` / `shard_batch` / `shard_list` cut a global batch (or
  a list of prompts) into contiguous, equal pieces, rank 0 first, so the N
  pieces put together are exactly the batch one process would have used;
- agreeing: `barrier`, `all_reduce_sum`, `mean_across`, `gather_objects`;
- the model: `prepare` wraps it as the launcher's accelerate config says (DDP
  by default; FSDP or DeepSpeed ZeRO when the config chooses them), `backward`
  and `clip_grad_norm` go through accelerate for the engines that need it, and
  `unwrap` gives back the Hugging Face model for sampling, evaluation and saving.

In a single process (no launcher: `WORLD_SIZE` unset or 1) nothing here
imports accelerate or touches torch.distributed, and every function is the
identity (a share of the whole, a sum over one rank...), so a plain
`alignloop pretrain` behaves exactly as it always did.

Loss normalisation. DDP (like FSDP and ZeRO) averages gradients over ranks.
A rank's mean over its own tokens, averaged that way, is not the mean over
the global batch when ranks hold different numbers of tokens (SFT responses,
PPO responses, preference groups). So each rank turns its local mean into its
share of the global mean, `local_mean * local_count / global_count`
(`global_share`), and backpropagates that times the world size
(`gradient_scale`), which the averaging divides out again: the gradient is
that of the global token mean, as one process would compute it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

import torch

from alignloop.errors import ConfigError

_accelerator = None


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def start(device_name: str = "auto") -> torch.device:
    """Join the launcher's process group (once) and return this process's device.

    A single process gets `pick_device(device_name)`. Under a launcher the
    process group is created by accelerate (gloo on CPU, NCCL on CUDA) and
    each process takes its own GPU (`cuda:LOCAL_RANK`), or the CPU when
    `device_name` is `cpu` or there is no GPU.
    """
    from alignloop.train.device import pick_device

    if not launched():
        return pick_device(device_name)
    global _accelerator
    use_cpu = device_name == "cpu" or not torch.cuda.is_available()
    if _accelerator is None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        # The frozen parts (reference, reward model) are never wrapped, and every trained
        # module uses all its parameters in each forward: no search for unused ones.
        _accelerator = Accelerator(cpu=use_cpu,
                                   kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    return _accelerator.device


def world_size() -> int:
    """Processes taking part in this run (1 without a launcher)."""
    return torch.distributed.get_world_size() if _active() else 1


def rank() -> int:
    """This process's number, 0 .. world_size - 1 (the launcher's RANK before the group is joined)."""
    if _active():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes files and talks to the console."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (no-op alone)."""
    if _active():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (writing a file, say); the others run it after, and find it written."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def _reduce(values: torch.Tensor, op) -> torch.Tensor:
    # gloo and NCCL both take float64 on the host or the process's device.
    device = _accelerator.device if _accelerator is not None and _accelerator.device.type == "cuda" else "cpu"
    tensor = values.detach().to(device=device, dtype=torch.float64).clone()
    torch.distributed.all_reduce(tensor, op=op)
    return tensor.cpu()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over every process of the given numbers (the numbers themselves alone)."""
    if not _active():
        return [float(v) for v in values]
    summed = _reduce(torch.tensor([float(v) for v in values], dtype=torch.float64), torch.distributed.ReduceOp.SUM)
    return summed.tolist()


def all_reduce_max(value: float) -> float:
    """The largest `value` over every process."""
    if not _active():
        return float(value)
    return float(_reduce(torch.tensor([float(value)], dtype=torch.float64), torch.distributed.ReduceOp.MAX)[0])


def mean_across(stats: dict[str, float], summed: Sequence[str] = ()) -> dict[str, float]:
    """Each statistic averaged over processes (those named in `summed`, e.g. throughputs, added up).

    Every process must pass the same keys. For means over equal shares (per
    response, per sequence) the average of the ranks' means is the global mean.
    """
    if not _active():
        return dict(stats)
    names = list(stats)
    totals = all_reduce_sum([stats[name] for name in names])
    n = world_size()
    return {name: total if name in summed else total / n for name, total in zip(names, totals)}


def global_mean(value: float | None, count: float) -> float | None:
    """The mean over every process of per-rank means `value` over `count` items each (`value` alone).

    A rank with no items passes `count` 0 (and any value); None if no rank has any.
    """
    if not _active():
        return value
    total, n = all_reduce_sum([(value or 0.0) * count if count else 0.0, count])
    return total / n if n else None


def gather_objects(value: Any) -> list[Any]:
    """Every process's `value` (picklable), in rank order, on every process."""
    if not _active():
        return [value]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every process (so a decision taken on it is the same everywhere)."""
    if not _active():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------
# Shares of a global batch


def local_slice(n_global: int, what: str) -> slice:
    """The rows of a global batch of `n_global` this process takes: an equal, contiguous share.

    `what` names the setting in the error when `n_global` does not split
    evenly, e.g. "train.batch_size".
    """
    n = world_size()
    if n_global % n:
        raise ConfigError(f"{what}={n_global} is the global batch and must be divisible by the {n} processes "
                          f"of this run; set it to a multiple of {n}")
    share = n_global // n
    return slice(rank() * share, (rank() + 1) * share)


def uneven_slice(n_global: int) -> slice:
    """A near-equal contiguous share of `n_global` rows (some may be empty), for evaluation."""
    n, r = world_size(), rank()
    base, extra = divmod(n_global, n)
    begin = r * base + min(r, extra)
    return slice(begin, begin + base + (1 if r < extra else 0))


def shard_batch(batch: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """This process's rows of a global batch of tensors (all with the same first dimension)."""
    if world_size() == 1:
        return batch
    rows = local_slice(next(iter(batch.values())).shape[0], what)
    return {key: value[rows] for key, value in batch.items()}


def shard_list(items: Sequence[Any], what: str) -> list[Any]:
    """This process's share of a list (the prompts of an iteration, say)."""
    if world_size() == 1:
        return list(items)
    return list(items[local_slice(len(items), what)])


def global_share(local_count: float) -> float:
    """`local_count / global_count`: the weight that turns a local mean into its part of the global mean.

    Exactly 1.0 alone. Every process must call it (it sums the counts).
    """
    if not _active():
        return 1.0
    total = all_reduce_sum([local_count])[0]
    return float(local_count) / total if total else 0.0


def gradient_scale() -> int:
    """The factor a rank's loss is multiplied by before backward: the gradient averaging divides it out."""
    return world_size()


# ---------------------------------------------------------------------------
# The model


def prepare(model: torch.nn.Module, *optimizers: torch.optim.Optimizer):
    """The model (and its optimizers) wrapped for this launch: unchanged alone; DDP, FSDP or DeepSpeed otherwise.

    Returns `(model, *optimizers)`. Which engine wraps it is accelerate's
    decision, from the environment `accelerate launch` sets from its config
    (plain DDP under torchrun).
    """
    if _accelerator is None:
        return (model, *optimizers)
    engine = _sharding_engine()
    if engine is not None:
        from alignloop.models.lora import has_adapters

        if has_adapters(model):
            # Saving merges each adapter into its whole base weight, which these engines split across ranks.
            raise ConfigError(f"lora.r > 0 runs under DDP (torchrun, or accelerate's multi-GPU config), not "
                              f"{engine}, which shards the weights; set lora.r=0 or choose DDP")
    prepared = _accelerator.prepare(model, *optimizers)
    return prepared if isinstance(prepared, tuple) else (prepared,)


def backward(loss: torch.Tensor) -> None:
    """`loss.backward()`, through accelerate under a launcher (DeepSpeed needs its own)."""
    if _accelerator is None:
        loss.backward()
    else:
        _accelerator.backward(loss)


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (0: no clipping); returns the norm before clipping.

    Under DDP every rank holds the same averaged gradients, so each computes
    the same norm; FSDP and DeepSpeed shard them, and accelerate adds up the shards.
    """
    limit = max_norm or float("inf")
    if _accelerator is None:
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), limit))
    return float(_accelerator.clip_grad_norm_(model.parameters(), limit))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside the launcher's wrapper (DDP, FSDP, DeepSpeed), or `model` itself."""
    if _accelerator is None:
        return model
    # keep_fp32_wrapper: unwrapping must not strip a mixed-precision wrapper off the training model.
    return _accelerator.unwrap_model(model, keep_fp32_wrapper=True)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's weights when an engine shards them (FSDP, ZeRO-3), else None (save as usual).

    Every process must call it: gathering the shards is collective.
    """
    if _sharding_engine() is None:
        return None
    return _accelerator.get_state_dict(model)


def _sharding_engine() -> str | None:
    """The name of accelerate's engine when it may shard the weights (FSDP, DeepSpeed), else None."""
    if _accelerator is None:
        return None
    name = _accelerator.distributed_type.name
    return name if name in ("FSDP", "DEEPSPEED") else None


class Forward(torch.nn.Module):
    """A module whose forward is `fn`, owning `params`' parameters: wraps a method call for DDP.

    DDP hooks the gradients of the module it wraps and needs each forward to
    go through the wrapper's `__call__`. The reward model trains through its
    `heads` / `packed_heads` methods rather than `forward`; this adapter lets
    the wrapper see those calls.
    """

    def __init__(self, params: torch.nn.Module, fn):
        super().__init__()
        self.params = params
        self._fn = fn

    def forward(self, *args, **kwargs):
        return self._fn(*args, **kwargs)
