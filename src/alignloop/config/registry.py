"""Which config model belongs to which stage, for `alignloop config show STAGE`.

Entries are import paths so that listing a stage does not import every stage.
"""

from __future__ import annotations

import importlib

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


def config_class(stage: str):
    """The config model of `stage`; a one-line error listing the known stages otherwise."""
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; known: {', '.join(sorted(STAGE_CONFIGS))}")
    module, name = STAGE_CONFIGS[stage].split(":")
    return getattr(importlib.import_module(module), name)
