"""Typed configuration: one pydantic model per stage, loaded from YAML and dotted overrides."""

from alignloop.config.base import Section, load_config, parse_overrides, to_yaml

__all__ = ["Section", "load_config", "parse_overrides", "to_yaml"]
