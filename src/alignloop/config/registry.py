"""Which config model belongs to which stage, for `alignloop config show STAGE`.

Entries are import paths so that listing a stage does not import every stage.
"""

from __future__ import annotations

import difflib
import importlib

from alignloop.config.base import did_you_mean
from alignloop.errors import ConfigError

STAGE_CONFIGS: dict[str, str] = {
    "pretrain": "alignloop.pretrain.config:PretrainConfig",
    "sft": "alignloop.sft.config:SFTConfig",
    "reward": "alignloop.reward.config:RewardConfig",
    "reward-eval": "alignloop.reward.config:RewardEvalConfig",
    "sample": "alignloop.sample.config:SampleConfig",
    "annotate": "alignloop.feedback.simulate:SimulateConfig",
    "loop": "alignloop.loop.config:LoopConfig",
    "ppo": "alignloop.rl.config:PPOConfig",
    "grpo": "alignloop.rl.config:GRPOConfig",
    "dpo": "alignloop.rl.config:DPOConfig",
    "bon": "alignloop.rl.config:BoNConfig",
    "eval": "alignloop.evaluation.config:EvalConfig",
}


def stage_name(words: str | list[str]) -> str:
    """The registry name of a stage as typed: `reward eval`, `reward-eval` and `reward_eval` are one stage."""
    text = " ".join([words] if isinstance(words, str) else words)
    return "-".join(text.replace("_", " ").replace("-", " ").split()).lower()


def config_class(stage: str | list[str]):
    """The config model of `stage` (as `stage_name` reads it); a one-line error listing the known stages otherwise."""
    name = stage_name(stage)
    if name not in STAGE_CONFIGS:
        hint = did_you_mean(difflib.get_close_matches(name, list(STAGE_CONFIGS), n=1, cutoff=0.6))
        raise ConfigError(f"unknown stage {name!r}{hint} (known: {', '.join(sorted(STAGE_CONFIGS))})")
    module, name = STAGE_CONFIGS[name].split(":")
    return getattr(importlib.import_module(module), name)
