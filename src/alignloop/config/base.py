"""Loading stage configs from YAML files and `key=value` overrides.

A stage config is a tree of `Section` models. Values come, in order of
precedence, from the command line (`train.max_steps=200`), then the `--config`
YAML file, then the defaults in the model. Any unknown key or wrong type is a
`ConfigError` whose one-line message names the dotted key.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alignloop.errors import ConfigError

T = TypeVar("T", bound=BaseModel)

# Settings several stages share, declared once.
Precision = Literal["auto", "bf16", "fp32"]
PrecisionSetting = Annotated[Precision, Field(
    description="auto: bf16 autocast on CUDA, fp32 on CPU; bf16 (CUDA only, an error on CPU); fp32.")]
# Above 1e6 a learning rate is a typo, not a setting: a one-line error here rather than an overflow inside AdamW.
LearningRate = Annotated[float, Field(gt=0, le=1e6)]


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn `["a.b=1", "c=x"]` into a nested dict, values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = _as_section(node.setdefault(part, {}))
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r} conflicts with an earlier value for {part!r}")
            node[part] = child
            node = child
        node[parts[-1]] = _combine(node.get(parts[-1]), value)
    return tree


def _as_section(value: Any) -> Any:
    """A section given as its path alone (`prompts=FILE`) as the mapping it stands for."""
    return {"path": value} if isinstance(value, str) else value


def _combine(earlier: Any, later: Any) -> Any:
    """`later` over `earlier`: mappings merge key by key, also with a section given as its path alone
    (`prompts=FILE` and `prompts.limit=5` in either order, or across the YAML file and the overrides)."""
    sections = isinstance(earlier, dict) and isinstance(later, (dict, str))
    if sections or isinstance(later, dict) and isinstance(earlier, str):
        return _merge(_as_section(earlier), _as_section(later))
    return later


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _combine(out[key], value) if key in out else value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _sections_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation holds (itself, or inside Optional/Union/Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _sections_in(arg)]


def dotted_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of a config model, sections included, as `train.max_steps` is written on the command line."""
    keys = []
    for name, field in cls.model_fields.items():
        keys.append(prefix + name)
        for section in _sections_in(field.annotation):
            keys.extend(dotted_keys(section, f"{prefix}{name}."))
    return keys


def suggest_key(key: str, known: list[str]) -> list[str]:
    """Known keys a mistyped `key` probably meant, best first (at most three; none when nothing is close).

    A sibling spelled alike wins (`train.max_stepz`); then the same name in another section
    (`max_steps` -> `train.max_steps`), or one spelled alike, inside the typed section first
    (`ppo.iteration` -> `ppo.ppo.iterations` before `grpo.grpo.iterations`); then any dotted key spelled alike.
    """
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, list(siblings), n=2, cutoff=0.7)
    if close:
        return [siblings[name] for name in close]
    for cutoff in (1.0, 0.85):
        names = difflib.get_close_matches(leaf, list({k.rpartition(".")[2] for k in known}), n=1, cutoff=cutoff)
        if names:
            matches = [k for k in known if k.rpartition(".")[2] == names[0]]
            inside = [k for k in matches if parent and k.startswith(parent + ".")]
            return (inside or matches)[:3]
    settings = [k for k in known if not any(other.startswith(k + ".") for other in known)]
    return difflib.get_close_matches(key, settings, n=3, cutoff=0.75)


def did_you_mean(candidates: list[str]) -> str:
    """`; did you mean 'a' or 'b'?` for a one-line error, or nothing without candidates."""
    if not candidates:
        return ""
    quoted = [repr(c) for c in candidates]
    return "; did you mean " + (quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]) + "?"


def _describe(error: dict[str, Any], cls: type[BaseModel] | None = None) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "<root>"
    if error["type"] == "extra_forbidden":
        hint = did_you_mean(suggest_key(key, dotted_keys(cls))) if cls is not None else ""
        return f"unknown config key {key!r}{hint}"
    value = error.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    return f"invalid value {shown} for config key {key!r}: {error['msg']}"


def validate(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from plain data, turning pydantic's report into one `ConfigError` line."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        message = _describe(errors[0], cls)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise ConfigError(message) from None


def rename_keys(data: Any, renamed: dict[str, str]) -> Any:
    """Raw config data with old key names moved to their current dotted place, for a before-validator.

    `renamed` maps an old top-level name to its new dotted key (`{"n_prompts": "prompts.limit"}`),
    so that files and commands written for an earlier layout keep working, silently. Giving a
    value under both names is a `ConfigError`.
    """
    if not isinstance(data, dict) or not any(old in data for old in renamed):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old not in data:
            continue
        value = data.pop(old)
        *parents, leaf = new.split(".")
        node = data
        for part in parents:
            child = node.get(part)
            if isinstance(child, BaseModel):
                child = child.model_dump(exclude_unset=True)
            elif child is not None and not isinstance(child, dict):
                raise ConfigError(f"invalid value {child!r} for config key {part!r}: a section, so key.name=value")
            child = dict(child or {})
            node[part] = child
            node = child
        if leaf in node and node[leaf] != value:
            raise ConfigError(f"config keys {old!r} and {new!r} are the same setting ({old!r} is its old name); "
                              f"give only {new!r}")
        node[leaf] = value
    return data


def load_config(cls: type[T], path: Path | None = None, overrides: list[str] | None = None,
                defaults: dict[str, Any] | None = None) -> T:
    """Resolve a stage config: `defaults` < YAML file < dotted overrides."""
    data: dict[str, Any] = dict(defaults or {})
    if path is not None:
        data = _merge(data, _read_yaml(Path(path)))
    data = _merge(data, parse_overrides(overrides))
    return validate(cls, data)


def to_yaml(config: BaseModel) -> str:
    """The config as YAML, in field order, with paths and enums as plain strings."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def to_commented_yaml(config: BaseModel, indent: int = 0) -> str:
    """The config as YAML with each field's description as a trailing comment (for `config show`)."""
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(config).model_fields.items():
        value = getattr(config, name)
        comment = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            doc = (type(value).__doc__ or "").strip().splitlines()
            lines.append(f"{pad}{name}:" + (f"  # {doc[0]}" if doc else ""))
            lines.append(to_commented_yaml(value, indent + 1).rstrip("\n"))
        else:
            dumped = yaml.safe_dump({name: value if not isinstance(value, Path) else str(value)},
                                    default_flow_style=True, width=10_000).strip()
            if dumped.startswith("{") and dumped.endswith("}"):
                dumped = dumped[1:-1]
            lines.append(f"{pad}{dumped}{comment}")
    return "\n".join(lines) + "\n"
