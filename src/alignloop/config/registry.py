"""Which config model belongs to which stage, for `alignloop config show STAGE`.

Entries are import paths so that listing a stage does not import every stage.
"""

from __future__ import annotations

import importlib

from alignloop.errors import ConfigError

STAGE_CONFIGS: dict[str, str] = {
    "pretrain": "alignloop.pretrain.config:PretrainConfig",
    "sft": "alignloop.sft.config:SFTConfig",
    "sample": "alignloop.sample.config:SampleConfig",
}


def config_class(stage: str):
    """The config model of `stage`; a one-line error listing the known stages otherwise."""
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}; known: {', '.join(sorted(STAGE_CONFIGS))}")
    module, name = STAGE_CONFIGS[stage].split(":")
    return getattr(importlib.import_module(module), name)
