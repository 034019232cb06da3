"""Building a causal LM from a preset, or opening any local Hugging Face checkpoint.

Presets are sized by parameter count with our 8192-token vocabulary and tied
embeddings: `tiny` about 1M, `small` about 5M, `base` about 25M. The default
architecture is Llama-style (RMSNorm, rotary positions, SwiGLU); GPT-2 is
selectable with `model.arch=gpt2`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from alignloop.config.base import Section
from alignloop.errors import CheckpointError
from alignloop.models.lora import LoraSettings

# width, layers, heads, MLP width (Llama); GPT-2 uses 4x width for its MLP.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 96, "layers": 4, "heads": 4, "mlp": 256},
    "small": {"hidden": 256, "layers": 4, "heads": 4, "mlp": 688},
    "base": {"hidden": 512, "layers": 6, "heads": 8, "mlp": 1376},
}


class ModelConfig(Section):
    """Which model to train: a preset built from scratch, or a local HF checkpoint."""

    preset: Literal["tiny", "small", "base"] = Field("small", description="Size when building from scratch.")
    arch: Literal["llama", "gpt2"] = Field("llama", description="Architecture when building from scratch.")
    path: Optional[str] = Field(None, description="A local HF causal-LM checkpoint to start from instead of a preset.")
    max_position_embeddings: int = Field(512, ge=16, description="Longest sequence a preset model accepts.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout of a preset model (0 keeps PPO ratios exact).")
    lora: LoraSettings = Field(default_factory=LoraSettings,
                               description="Train LoRA adapters on `path` instead of every weight (needs `path`).")


def build_model(config: ModelConfig, vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int):
    """A freshly initialised causal LM of the configured preset and architecture."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    size = PRESETS[config.preset]
    if config.arch == "llama":
        hf_config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=size["hidden"], intermediate_size=size["mlp"],
            num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
            num_key_value_heads=size["heads"], max_position_embeddings=config.max_position_embeddings,
            tie_word_embeddings=True, attention_dropout=config.dropout, rms_norm_eps=1e-5,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        )
    else:
        hf_config = GPT2Config(
            vocab_size=vocab_size, n_embd=size["hidden"], n_layer=size["layers"], n_head=size["heads"],
            n_positions=config.max_position_embeddings, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
            attn_pdrop=config.dropout, tie_word_embeddings=True,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        )
    return AutoModelForCausalLM.from_config(hf_config)


def check_checkpoint_dir(path: Path | str) -> Path:
    """Fail with one line unless `path` looks like an HF checkpoint with readable weights."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no config.json")
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} is corrupt: config.json is not valid JSON") from None
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights:
        raise CheckpointError(f"checkpoint {path} has no weights (model.safetensors)")
    return path


def load_causal_lm(path: Path | str, dtype=None):
    """Open a local HF causal-LM checkpoint; any failure is a one-line `CheckpointError`."""
    from transformers import AutoModelForCausalLM

    path = check_checkpoint_dir(path)
    try:
        kwargs = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # safetensors, json and transformers errors all mean "corrupt"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {first[:200]}") from None


def count_parameters(model) -> int:
    """Distinct trainable parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total
