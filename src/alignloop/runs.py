"""The run directory: where every stage reads its inputs and writes its outputs.

Layout (see DESIGN.md):

    runs/NAME/
      run.yaml          resolved configuration of every stage that ran
      manifest.json     which stages finished, with hashes of their inputs
      tokenizer/
      pretrain/final/
      sft/final/
      feedback.db
      rounds/001/...
      report.html
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from alignloop import atomic
from alignloop.errors import AlignloopError


class RunDir:
    """Paths inside one run directory, and the records kept there (run.yaml, manifest.json)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # ---- well-known paths -------------------------------------------------
    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def run_yaml(self) -> Path:
        return self.root / "run.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def feedback_db(self) -> Path:
        return self.root / "feedback.db"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def stage_dir(self, stage: str) -> Path:
        """`pretrain/`, `sft/`, ...: the folder of a stage's checkpoints and metrics."""
        return self.root / stage

    def final(self, stage: str) -> Path:
        """The finished checkpoint of a stage, e.g. `pretrain/final`."""
        return self.root / stage / "final"

    def round_dir(self, number: int) -> Path:
        return self.root / "rounds" / f"{number:03d}"

    def ensure(self) -> "RunDir":
        # Owner-only when we create it: it holds the feedback store (password hashes, session tokens).
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    # ---- run.yaml ---------------------------------------------------------
    def read_configs(self) -> dict[str, Any]:
        if not self.run_yaml.exists():
            return {}
        try:
            data = yaml.safe_load(self.run_yaml.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raise AlignloopError(f"{self.run_yaml} is not valid YAML; fix or delete it") from None
        return data if isinstance(data, dict) else {}

    def record_config(self, stage: str, config: BaseModel) -> None:
        """Store the resolved config of `stage` in run.yaml, keeping the other stages'.

        Under a launcher only rank 0 writes it (RANK is set by torchrun and accelerate launch).
        """
        if not _main_process():
            return
        configs = self.read_configs()
        configs[stage] = config.model_dump(mode="json")
        self.ensure()
        atomic.write_text(self.run_yaml, yaml.safe_dump(configs, sort_keys=False))

    # ---- manifest.json ----------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise AlignloopError(f"{self.manifest_path} is corrupt (not JSON); fix or delete it") from None
        if not isinstance(data, dict) or not isinstance(data.setdefault("stages", {}), dict) \
                or not all(isinstance(entry, dict) for entry in data["stages"].values()):
            raise AlignloopError(f"{self.manifest_path} is corrupt: expected an object whose 'stages' maps each stage "
                                 f"to an object; fix or delete it")
        return data

    def mark_stage(self, stage: str, status: str, inputs_hash: str | None = None, reset: bool = False,
                   **extra: Any) -> None:
        """Record that `stage` is `running` or `done`, with the hash of what it read (rank 0 only).

        `reset` starts the entry afresh; an `extra` value of None removes that field.
        """
        if not _main_process():
            return
        manifest = self.read_manifest()
        entry = {} if reset else manifest["stages"].get(stage, {})
        entry.update({"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if inputs_hash is not None:
            entry["inputs_hash"] = inputs_hash
        for key, value in extra.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
        manifest["stages"][stage] = entry
        self.ensure()
        atomic.write_json(self.manifest_path, manifest)

    def mark_stale(self, stages: list[str], reason: str) -> None:
        """Flag stages whose inputs were redone: their artifacts no longer follow from what is upstream now."""
        if not stages or not _main_process():
            return
        manifest = self.read_manifest()
        for stage in stages:
            manifest["stages"].setdefault(stage, {})["stale"] = reason
        atomic.write_json(self.manifest_path, manifest)

    def stage_done(self, stage: str, inputs_hash: str | None = None) -> bool:
        """Whether `stage` finished, and (if given) with the same inputs."""
        entry = self.read_manifest()["stages"].get(stage)
        if not entry or entry.get("status") != "done":
            return False
        return inputs_hash is None or entry.get("inputs_hash") == inputs_hash

    def round_numbers(self) -> list[int]:
        """Rounds this directory holds work for: non-empty `rounds/NNN/` folders and manifest entries `stage:NNN`."""
        found = set()
        folder = self.root / "rounds"
        if folder.is_dir():
            found |= {int(p.name) for p in folder.iterdir()
                      if re.fullmatch(r"[0-9]{3}", p.name) and p.is_dir() and any(p.iterdir())}
        for key in self.read_manifest()["stages"]:
            suffix = key.rsplit(":", 1)[-1] if ":" in key else ""
            if re.fullmatch(r"[0-9]{3}", suffix):
                found.add(int(suffix))
        return sorted(found)

    def lock(self, command: str | None = None):
        """Hold this run directory for one writer (see `alignloop.runlock`)."""
        from alignloop.runlock import run_lock

        return run_lock(self.root, command)


def read_record(path: Path) -> dict[str, Any]:
    """A JSON object the run keeps (eval.json and the like); a one-line error if it is damaged."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise AlignloopError(f"{path} is damaged ({type(exc).__name__}); rerun the command that wrote it "
                             f"with --force") from None
    if not isinstance(record, dict):
        raise AlignloopError(f"{path} is damaged (not a JSON object); rerun the command that wrote it with --force")
    return record


def _main_process() -> bool:
    # Read from the launcher's environment so that this module needs no torch.
    return os.environ.get("RANK", "0") == "0"


def round_stage_key(stage: str, round_number: int) -> str:
    """The manifest entry of a stage in a round, e.g. `ppo:001`."""
    return f"{stage}:{round_number:03d}"


def hash_inputs(*parts: Any) -> str:
    """A short stable hash of configs (as JSON) and file paths (by size and mtime)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, BaseModel):
            part = part.model_dump(mode="json")
        if isinstance(part, Path):
            stat = part.stat() if part.exists() else None
            part = [str(part), stat.st_size if stat else None, stat.st_mtime_ns if stat else None]
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
