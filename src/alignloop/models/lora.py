"""LoRA through peft: train low-rank adapters on a frozen model instead of every weight.

With `lora.r > 0` a stage wraps its trainable model in a peft `PeftModel`
(Hu et al. 2021: W x + (alpha / r) B A x, with B = 0 at the start, so the
adapted model is exactly the original one until the first step). The
optimizer then only holds the adapters (and, for a reward model or a critic,
its scalar head, which stays fully trainable), which is where the memory goes
in full fine-tuning: AdamW keeps two moments per trained weight.

On disk:
- a finished model (`final/`, a reward model's `best/`) is the *merged* model,
  an ordinary HF checkpoint that `from_pretrained` and the next stage open, with
  the adapter beside it in `adapter/` (peft's format: `PeftModel.from_pretrained`
  puts it back on the checkpoint the run started from);
- a training checkpoint holds only `adapter/` (plus the optimizer state): the
  frozen base is the stage's start checkpoint, rebuilt from there on resume.

RL stages whose reference is the policy's own start use the policy with its
adapter switched off as the reference (`ReferenceView`) instead of a second copy.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pydantic import Field

from alignloop.config.base import Section
from alignloop.errors import CheckpointError, ConfigError

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoraSettings(Section):
    """Low-rank adapters (peft LoRA) instead of full fine-tuning; r = 0 turns them off."""

    r: int = Field(0, ge=0, description="Rank of the adapters. 0: off (every weight is trained).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input (0 keeps PPO ratios exact).")
    target_modules: Optional[list[str]] = Field(
        None, description="Names of the layers to adapt, e.g. [q_proj, v_proj] (Llama) or [c_attn] (GPT-2). Unset: "
                          "every linear layer except the output head (peft's all-linear), for any architecture.")

    @property
    def enabled(self) -> bool:
        return self.r > 0


def _peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is a dependency; this names it when an install lacks it
        raise ConfigError("lora.r > 0 needs the peft package (pip install peft)") from None
    return peft


def peft_model_of(model) -> Optional[torch.nn.Module]:
    """The peft `PeftModel` in `model` (itself or a wrapper's `.model`, e.g. a critic), else None.

    A launcher's wrapper (DDP...) around either is taken off first (`distributed.unwrap`).
    """
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return None
    from alignloop.train import distributed

    model = distributed.unwrap(model)
    for candidate in (model, getattr(model, "model", None)):
        if isinstance(candidate, PeftModel):
            return candidate
    return None


def is_lora(model) -> bool:
    """Whether `model` trains LoRA adapters (see `peft_model_of`)."""
    return peft_model_of(model) is not None


def has_adapters(module: torch.nn.Module) -> bool:
    """Whether any submodule of `module`, however deeply wrapped, is a peft adapter layer."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(sub, BaseTunerLayer) for sub in module.modules())


def add_lora(model, settings: LoraSettings, task: Literal["causal_lm", "seq_cls"], seed: int = 0):
    """`model` wrapped with fresh adapters: only they (and a seq_cls model's head) stay trainable.

    task "seq_cls" (reward model, critic) keeps the scalar head (`score` or `classifier`) fully
    trainable and saved with the adapter (peft's modules_to_save). The adapters' random start
    depends on `seed` alone (not on whatever ran before), and the global RNG is left as it was.
    """
    peft = _peft()
    _check_targets(model, settings.target_modules)
    targets = settings.target_modules or "all-linear"
    # GPT-2's Conv1D stores its weight transposed; peft must be told (it would guess, with a warning).
    conv1d = any(type(module).__name__ == "Conv1D" for module in model.modules())
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=targets, bias="none", fan_in_fan_out=conv1d,
                             task_type=peft.TaskType.CAUSAL_LM if task == "causal_lm" else peft.TaskType.SEQ_CLS)
    try:  # peft's own complaints (e.g. a target that is not a layer it can adapt) become one line too
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # peft asks transformers for `is_gradient_checkpointing`, which transformers 5 deprecates.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            torch.manual_seed(seed)
            return peft.get_peft_model(model, config)
    except ValueError as exc:
        first = str(exc).splitlines()[0][:160]
        raise ConfigError(f"lora.target_modules {settings.target_modules} do not fit {type(model).__name__} "
                          f"({first}); its linear layers are named {', '.join(_linear_names(model))}") from None


def _linear_names(model) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"})


def _check_targets(model, targets: Optional[list[str]]) -> None:
    """Every named target must be some layer's name: peft would silently skip one that matches nothing."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} | {name for name, _ in model.named_modules()}
    missing = [t for t in targets or [] if t not in names]
    if missing:
        raise ConfigError(f"lora.target_modules {missing} match no layer of {type(model).__name__}; its linear "
                          f"layers are named {', '.join(_linear_names(model))}")


def trainable_parameters(model) -> int:
    """Number of parameters the optimizer will update (distinct tensors)."""
    seen, total = set(), 0
    for parameter in model.parameters():
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def describe(model) -> str:
    """One phrase for the logs: how many of the model's parameters train, e.g. under LoRA."""
    from alignloop.models.causal_lm import count_parameters

    total = count_parameters(model)
    trained = trainable_parameters(model)
    wrapper = peft_model_of(model)
    kind = f"LoRA r={wrapper.peft_config[wrapper.active_adapter].r}: " if wrapper is not None else ""
    return f"{kind}{trained:,} of {total:,} parameters train ({100 * trained / max(total, 1):.2f}%)"


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights of the adapted model as plain HF keys: W + (alpha / r) B A for each adapted layer.

    Computed beside the training weights (nothing is merged in place), so saving a best or final
    model mid-run leaves the frozen base bit-for-bit as it was. Each merged weight goes to the CPU as
    soon as it is made (it is on its way to disk): on a GPU the copy costs one layer at a time.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper
    from peft.utils.save_and_load import get_base_model_state_dict

    from alignloop.train.distributed import whole

    wrapper = peft_model_of(model)
    adapter = wrapper.active_adapter
    # Under FSDP every value is a shard: `whole` gathers it (every process runs this, in the same order).
    state = {key: whole(value.detach()) for key, value in get_base_model_state_dict(wrapper).items()}
    for name, module in wrapper.get_base_model().named_modules():
        if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_A", {}):
            base = module.get_base_layer().weight
            with torch.no_grad():
                state[f"{name}.weight"] = whole(base + module.get_delta_weight(adapter).to(base.dtype)).cpu()
        elif isinstance(module, ModulesToSaveWrapper):
            for key, value in module.modules_to_save[adapter].state_dict().items():
                state[f"{name}.{key}"] = whole(value.detach())
    return state


def gathered_lora(model, merged: bool) -> dict[str, Any]:
    """What `save_lora` writes, whole, from a model FSDP shards: {"merged": HF weights or None, "peft":
    the peft model's state}. Every process must call it (it gathers); rank 0 writes."""
    from alignloop.train.distributed import whole

    wrapper = peft_model_of(model)
    return {"merged": merged_state_dict(wrapper) if merged else None,
            "peft": {key: whole(value).cpu() for key, value in wrapper.state_dict().items()}}


def save_lora(directory: Path, model, merged: bool, gathered: Optional[dict[str, Any]] = None) -> None:
    """Write `adapter/` into `directory`, and with `merged` the merged model as an HF checkpoint too.

    `gathered`: `gathered_lora`'s whole weights when FSDP shards the model.
    """
    wrapper = peft_model_of(model)
    directory = Path(directory)
    if merged:
        base = wrapper.get_base_model()
        weights = gathered["merged"] if gathered is not None else merged_state_dict(wrapper)
        base.save_pretrained(str(directory), state_dict=weights, safe_serialization=True)
    # Embeddings are never resized under LoRA here; saying so stops peft from comparing vocabularies
    # with the base checkpoint's config (which it would look up on the Hub for a path that moved).
    extra = {"state_dict": gathered["peft"]} if gathered is not None else {}
    wrapper.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True, save_embedding_layers=False,
                            **extra)


def load_adapter(model, directory: Path) -> None:
    """Load adapter weights saved by `save_lora` (in `directory/adapter/`) into a model built with `add_lora`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = Path(directory) / ADAPTER_DIR / ADAPTER_WEIGHTS
    if not file.is_file():
        raise CheckpointError(f"{Path(directory)} has no LoRA adapter ({ADAPTER_DIR}/{ADAPTER_WEIGHTS}); it was "
                              f"written without lora.r, or is incomplete")
    try:
        weights = load_file(str(file))
    except Exception as exc:
        raise CheckpointError(f"adapter {file} is corrupt: {str(exc).splitlines()[0][:200]}") from None
    from alignloop.train.distributed import loads_whole_tensors

    wrapper = peft_model_of(model)
    with loads_whole_tensors(wrapper):  # under FSDP each process keeps its shards of the adapter
        result = set_peft_model_state_dict(wrapper, weights)
    if result.unexpected_keys:
        raise CheckpointError(f"adapter {file} does not match this model's LoRA settings (e.g. "
                              f"{result.unexpected_keys[0]}); use the lora settings the run started with")


def with_lora(model, settings: LoraSettings, task: Literal["causal_lm", "seq_cls"], checkpoint: Optional[Path] = None,
              seed: int = 0):
    """`model` with adapters when `settings.enabled` (their weights from `checkpoint` when resuming), else itself."""
    if not settings.enabled:
        return model
    wrapped = add_lora(model, settings, task, seed)
    if checkpoint is not None:
        load_adapter(wrapped, checkpoint)
    return wrapped


class ReferenceView:
    """The policy with its adapter switched off: the frozen start model, without a second copy in memory.

    It owns no parameters (so `freeze` and optimizers see none) and never records a graph: the
    reference is only ever read. Forward passes run inside peft's `disable_adapter()`.
    """

    training = False

    def __init__(self, policy):
        self.policy = peft_model_of(policy)
        if self.policy is None:
            raise ValueError("ReferenceView needs a LoRA policy")

    def __call__(self, *args, **kwargs):
        with torch.no_grad(), self.policy.disable_adapter():
            return self.policy(*args, **kwargs)

    def get_base_model(self):
        return self.policy.get_base_model()

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def parameters(self):
        return iter(())

    def modules(self):
        return iter(())

    def to(self, *args, **kwargs):
        return self
