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
  by default; FSDP when the config chooses it), `backward` and
  `clip_grad_norm` go through the engine, `unwrap` gives back the Hugging
  Face model, `full_params` makes its weights whole for passes that read them
  directly (sampling, evaluation), and `full_state_dict` / `optimizer_state` /
  `load_optimizer_state` move whole weights and optimizer state in and out of
  checkpoints, which therefore do not depend on the engine that wrote them.

FSDP is torch's own (FSDP2, `torch.distributed.fsdp.fully_shard`), applied
here rather than by accelerate, whose FSDP plugin refuses the CPU: one path
for CPU (gloo) and CUDA (NCCL). Each transformer block is a sharded unit, and
the rest of the model (embeddings, heads) the root unit. DeepSpeed is refused
in one line (see `start`).

In a single process (no launcher: `WORLD_SIZE` unset or 1) nothing here
imports accelerate or touches torch.distributed, and every function is the
identity (a share of the whole, a sum over one rank...), so a plain
`alignloop pretrain` behaves exactly as it always did.

Loss normalisation. DDP (like FSDP) averages gradients over ranks.
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
import sys
from typing import Any, Iterator, Sequence

import torch

from alignloop.errors import ConfigError
from alignloop.train.host_memory import keep_freed_memory

_accelerator = None
_fsdp = False  # whether `prepare` shards with FSDP2 (the launcher's accelerate config chose FSDP)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1", "yes")


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
    `device_name` is `cpu` or there is no GPU. A process that trains on CPU
    keeps the memory it frees for reuse (`host_memory.keep_freed_memory`).
    """
    device = _join(device_name)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def _join(device_name: str) -> torch.device:
    from alignloop.train.device import pick_device

    if not launched():
        return pick_device(device_name)
    global _accelerator, _fsdp
    use_cpu = device_name == "cpu" or not torch.cuda.is_available()
    if _accelerator is None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        _check_engine()
        _fsdp = _env_flag("ACCELERATE_USE_FSDP")
        if _fsdp:
            # `prepare` shards with fully_shard itself; accelerate only joins the processes. Neither it
            # (which would wrap the model on CUDA) nor transformers (which would then load weights on
            # rank 0 alone) may act on the flag.
            os.environ.pop("ACCELERATE_USE_FSDP")
        # The frozen parts (reference, reward model) are never wrapped, and every trained
        # module uses all its parameters in each forward: no search for unused ones.
        _accelerator = Accelerator(cpu=use_cpu,
                                   kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    return _accelerator.device


def end_launched_process(code: object) -> None:
    """End a launched process that joined the process group now, with exit `code` (returns if it did not join).

    After a stage's work (its files written atomically), the interpreter's own teardown of the C++ objects
    behind the process group (gloo's threads, the rendezvous store) sometimes aborted a finished rank
    ("terminate called without an active exception", exit -6), failing the whole launch. So a launched
    process waits for the others when it succeeded (they all run the same stage; a failed one does not wait
    for ranks that may be gone), flushes its output and leaves without that teardown.
    """
    if _accelerator is None:
        return
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): print it, as the interpreter would
        print(code, file=sys.stderr)
        code = 1
    if code == 0 and _active():
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _check_engine() -> None:
    """One-line errors for the accelerate settings this module does not run (before any process group exists)."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        # Its ZeRO stages partition weights and optimizer state in DeepSpeed's own formats, which the
        # sampling, checkpoint and resume paths here do not read; FSDP shards the same three things.
        raise ConfigError("DeepSpeed is not supported (sampling, checkpoints and resume are built for DDP and "
                          "FSDP); choose FSDP (distributed_type: FSDP, fsdp_version: 2) or DDP in the accelerate "
                          "config")
    if _env_flag("ACCELERATE_USE_FSDP") and _env_flag("FSDP_OFFLOAD_PARAMS"):
        raise ConfigError("FSDP with fsdp_offload_params is not supported; set it to false in the accelerate config")


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
    """The model (and its optimizers) wrapped for this launch: unchanged alone; DDP or FSDP otherwise.

    Returns `(model, *optimizers)`. The engine is the accelerate config's choice,
    from the environment `accelerate launch` sets from it (plain DDP under
    torchrun, unless ACCELERATE_USE_FSDP=true). FSDP shards the model in place
    and points the optimizers at its sharded parameters, so an optimizer's
    state is loaded after this (`load_optimizer_state`).
    """
    if _accelerator is None:
        return (model, *optimizers)
    if _fsdp:
        return (_fully_shard(model, optimizers), *optimizers)
    prepared = _accelerator.prepare(model, *optimizers)
    return prepared if isinstance(prepared, tuple) else (prepared,)


def _fully_shard(model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> torch.nn.Module:
    """Shard `model` in place with FSDP2 (each transformer block a unit, the rest the root) and point
    `optimizers` at the sharded parameters, which replace the module's own.

    The optimizers must not hold state yet: resume loads it afterwards (`load_optimizer_state`).
    """
    from torch.distributed.fsdp import fully_shard

    names = {id(p): name for name, p in model.named_parameters()}
    reshard = _reshard_after_forward()
    blocks = _block_classes(model)
    units = [m for m in model.modules() if m is not model and type(m).__name__ in blocks]
    name = type(_hf_model(model)).__name__  # before fully_shard renames the class (FSDP<name>)
    for module in units:
        fully_shard(module, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    # FSDP2 names its root at the first forward. Evaluations that call a backbone (the reward model's)
    # could reach a block first and make it a root; naming `model` now rules that out. (No public API.)
    model._get_fsdp_state()._lazy_init()
    if is_main():  # the one line that says the accelerate config's FSDP was taken up
        print(f"FSDP: {name} sharded over {world_size()} processes "
              f"({len(units)} blocks and the rest)", file=sys.stderr)
    sharded = dict(model.named_parameters())
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(p)]] for p in group["params"]]
    return model


def _reshard_after_forward() -> bool:
    """The accelerate config's `fsdp_reshard_after_forward` (FSDP2's true/false, or FSDP1's strategy names)."""
    setting = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    return setting not in ("false", "shard_grad_op", "no_reshard")


def _block_classes(model: torch.nn.Module) -> set[str]:
    """The class names of the repeated blocks a Hugging Face model inside `model` declares (`_no_split_modules`)."""
    found: set[str] = set()
    for module in model.modules():
        found.update(getattr(module, "_no_split_modules", None) or ())
    return found


def backward(loss: torch.Tensor) -> None:
    """`loss.backward()`, through accelerate under DDP."""
    if _accelerator is None or _fsdp:
        loss.backward()  # FSDP2's hooks reduce-scatter (and average) the gradients
    else:
        _accelerator.backward(loss)


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (0: no clipping); returns the norm before clipping.

    Under DDP every rank holds the same averaged gradients, so each computes
    the same norm; FSDP shards them, and the norm adds up the squares of every shard.
    """
    limit = max_norm or float("inf")
    if _accelerator is None:
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), limit))
    if _fsdp:
        # The gradients are sharded tensors (DTensor): torch sums the squares of every shard.
        return float(whole(torch.nn.utils.clip_grad_norm_(model.parameters(), limit)))
    return float(_accelerator.clip_grad_norm_(model.parameters(), limit))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside the launcher's wrapper (DDP), or `model` itself (alone, and FSDP's sharded module)."""
    if _accelerator is None or _fsdp:
        return model  # FSDP2 shards the module in place: it is still the Hugging Face model
    # keep_fp32_wrapper: unwrapping must not strip a mixed-precision wrapper off the training model.
    return _accelerator.unwrap_model(model, keep_fp32_wrapper=True)


def full_state_dict(model: torch.nn.Module, merged: bool = True) -> dict[str, Any] | None:
    """The whole weights of the Hugging Face model in `model` when FSDP shards them (on rank 0; the
    others get an empty dict), else None (save as usual).

    The keys are those of the outermost Hugging Face model inside `model` (a
    critic's or reward scorer's wrapper adds none), as its `save_pretrained`
    expects. A LoRA model gives what `alignloop.models.lora.save_lora` writes
    instead (`gathered_lora`; the merged weights only with `merged`). Every
    process must call it: gathering the shards is collective.
    """
    if not _fsdp:
        return None
    from alignloop.models.lora import gathered_lora, is_lora

    if is_lora(model):
        return gathered_lora(model, merged)
    target = _hf_model(model)
    tensors = dict(target.named_parameters(remove_duplicate=False))
    tensors.update(target.named_buffers(remove_duplicate=False))
    gathered: dict[int, torch.Tensor] = {}  # tied weights (embeddings = LM head) gathered once, saved as one
    out = {}
    for name, value in target.state_dict().items():
        key = id(tensors.get(name, value))
        if key not in gathered:
            gathered[key] = whole(value).cpu()
        if is_main():
            out[name] = gathered[key]
    return out


def load_full_state_dict(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load whole weights (as `full_state_dict` gives them, keys of the Hugging Face model in `model`) into
    `model`, each process keeping its shard under FSDP; missing keys (tied weights) are left alone."""
    target = _hf_model(model) if _fsdp else model
    with loads_whole_tensors(target):
        target.load_state_dict(weights, strict=False)


@contextlib.contextmanager
def loads_whole_tensors(module: torch.nn.Module) -> Iterator[None]:
    """Inside the block, `module.load_state_dict` takes whole tensors (from a file every process read)
    and each process keeps its shards under FSDP; it is the plain method otherwise.

    For loaders that call `load_state_dict` themselves (peft's adapter loading).
    """
    if not _fsdp:
        yield
        return
    current = module.state_dict()

    def load(state_dict, strict: bool = True, assign: bool = False):
        state_dict = {name: _shard_like(value, current[name]) if name in current else value
                      for name, value in state_dict.items()}
        return type(module).load_state_dict(module, state_dict, strict=strict)  # assign would unshard

    module.load_state_dict = load
    try:
        yield
    finally:
        del module.load_state_dict


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    from transformers import PreTrainedModel

    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), model)


def whole(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (collective: every process calls it, in the same order), or
    `value` itself when it is not sharded."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def local(value: torch.Tensor) -> torch.Tensor:
    """This process's part of an FSDP shard (no communication), or `value` itself when it is not sharded."""
    from torch.distributed.tensor import DTensor

    return value.to_local() if isinstance(value, DTensor) else value


def _shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` cut as `like` is sharded; every process holds `whole`, so no process sends anything."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return whole
    whole = whole.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's `state_dict`, whole: under FSDP each sharded state tensor (Adam's moments) is
    gathered (collective: every process calls it), so checkpoints hold the same state whatever the engine."""
    state = optimizer.state_dict()
    if not _fsdp:
        return state
    # Every process walks the same parameters in the same order: the gathers line up.
    state["state"] = {index: {key: whole(value).cpu() if torch.is_tensor(value) else value
                              for key, value in entry.items()}
                      for index, entry in sorted(state["state"].items())}
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load what `optimizer_state` gave (from any engine) into the prepared optimizer; under FSDP each
    process keeps the shard of every state tensor that its parameters hold."""
    if _fsdp:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = {**state, "state": {index: {key: _shard_like(value, params[index]) if torch.is_tensor(value)
                                            and value.dim() > 0 else value for key, value in entry.items()}
                                    for index, entry in state["state"].items()}}
    optimizer.load_state_dict(state)


@contextlib.contextmanager
def full_params(*models: torch.nn.Module | None) -> Iterator[None]:
    """Every weight of `models` whole on this process inside the block, for passes that read the weights
    directly or that not every process runs (sampling, evaluation, rank 0's samples).

    Under FSDP the sharded units are gathered on entry (collective: every process
    enters the block) and kept whole through the block's forward passes, which
    then exchange nothing; they are sharded again on exit. Alone and under DDP
    it does nothing. Weights changed inside the block do not reach the shards,
    and `state_dict()` inside it would shard them again (FSDP2's hook): save
    and load outside it.
    """
    if not _fsdp:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    roots = [m for m in models if isinstance(m, FSDPModule)]
    units = [u for root in roots for u in root.modules() if isinstance(u, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            # As before: FSDP2 keeps a root gathered after forward (its backward comes right after).
            unit.set_reshard_after_forward(_reshard_after_forward() and unit not in roots, recurse=False)


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
