"""What a stage read, by content, and whether the work recorded for it still stands.

A stage's inputs are named fingerprints:

- `config`: the settings that shape its result. Operational settings (threads,
  device, logging and checkpoint cadence) are left out, and so are the settings
  that name files: those files are fingerprinted by content instead, so spelling
  a path another way changes nothing.
- one entry per artifact it reads (a checkpoint, a data file, the judgments it
  trained on): the sha256 of the bytes, never a path, a size or an mtime.

The manifest keeps these with the stage (`inputs`, `config`, `notes`) and the
content id of what it wrote (`outputs`). `plan_stage` compares them with the
current ones and says whether the stage runs from scratch, resumes, is already
done, or must be refused because finished or half-done work came from other
inputs; `--force` then clears that work and marks the stages built on it stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from pydantic import BaseModel

from alignloop import atomic
from alignloop.errors import AlignloopError, DataError

# Leaf names of settings that change how a stage runs, never what it produces.
OPERATIONAL_KEYS = frozenset({
    "threads", "device", "log_every", "save_every", "keep_last", "max_minutes", "samples", "sample_tokens",
    "sample_table_every", "sample_table_rows", "round",
})

# Files inside an artifact folder that are not part of its content (crash leftovers).
_SKIPPED_PREFIXES = (".tmp-", ".old-", ".corrupt-")

CACHE_FILE = ".fingerprints.json"


class StageInputsChanged(AlignloopError):
    """Finished or half-done work of a stage came from other inputs than the ones given now."""


# ---- fingerprints -------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """sha256 of files, remembered by (device, inode, size, mtime) so that a large checkpoint is read once.

    The stat key only decides when to read a file again; the fingerprint is always of its bytes.
    """

    def __init__(self, path: Optional[Path] = None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache is only a cache: start a new one

    @classmethod
    def for_run(cls, run) -> "DigestCache":
        """The cache kept in a run directory (written by the main process alone)."""
        return cls(run.root / CACHE_FILE if os.environ.get("RANK", "0") == "0" else None)

    def file_digest(self, path: Path) -> str:
        stat = path.stat()
        key = str(path.resolve())
        signature = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns]
        cached = self.entries.get(key)
        if isinstance(cached, list) and len(cached) == 2 and cached[0] == signature:
            return cached[1]
        digest = sha256_file(path)
        self.entries[key] = [signature, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            atomic.write_json(self.path, self.entries)
        except OSError:
            pass  # not being able to remember a digest costs time on the next run, nothing else
        self.dirty = False


def _content_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(_SKIPPED_PREFIXES))
        for name in sorted(names):
            if not name.startswith(_SKIPPED_PREFIXES) and name != CACHE_FILE:
                files.append(Path(root) / name)
    return files


def content_id(path: Path | str, cache: Optional[DigestCache] = None) -> str:
    """The sha256 (first 16 hex digits) of a file's bytes, or of a folder's files and their relative names."""
    path = Path(path)
    cache = cache or DigestCache()
    if path.is_file():
        return cache.file_digest(path)[:16]
    if not path.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for file in _content_files(path):
        digest.update(f"{file.relative_to(path).as_posix()}\0{cache.file_digest(file)}\n".encode())
    return digest.hexdigest()[:16]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def config_settings(cfg: BaseModel | dict, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The flat `dotted.key: value` settings of a config that shape a stage's result.

    `exclude`: dotted keys of settings that name files, which are fingerprinted by content instead.
    """
    tree = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    excluded = set(exclude)
    return {key: value for key, value in sorted(_flatten(tree).items())
            if key.rsplit(".", 1)[-1] not in OPERATIONAL_KEYS and key not in excluded}


def digest_json(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- what a stage read ---------------------------------------------------------------------

@dataclass
class StageInputs:
    """Named fingerprints of everything a stage reads, with a human note for each (a path, a count)."""

    settings: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    # The digests read on the way, written to the run's cache once the stage records itself (a command that
    # fails before that leaves the run directory as it found it).
    cache: Optional[DigestCache] = field(default=None, repr=False)
    # The config class's defaults: a setting that a newer version added is no change while it keeps them.
    defaults: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, cfg: BaseModel | dict, exclude: Iterable[str] = ()) -> "StageInputs":
        settings = config_settings(cfg, exclude)
        try:
            defaults = config_settings(type(cfg)(), exclude) if isinstance(cfg, BaseModel) else {}
        except ValueError:  # a config without defaults for every field
            defaults = {}
        return cls(settings=settings, fingerprints={"config": digest_json(settings)}, defaults=defaults)

    def add_artifact(self, name: str, path: Path | str, cache: Optional[DigestCache] = None) -> "StageInputs":
        """Fingerprint a file or checkpoint folder by its content (a one-line error if it is not there)."""
        if not Path(path).exists():
            raise DataError(f"{name.replace('_', ' ')} {path} does not exist")
        self.cache = self.cache or cache
        self.fingerprints[name] = content_id(path, cache)
        self.notes[name] = str(path)
        return self

    def add_value(self, name: str, fingerprint: str, note: str) -> "StageInputs":
        """An input fingerprinted by the caller (e.g. the judgments a reward model trains on)."""
        self.fingerprints[name] = fingerprint
        self.notes[name] = note
        return self

    @property
    def digest(self) -> str:
        return digest_json(self.fingerprints)


def describe_changes(entry: dict[str, Any], current: StageInputs) -> list[str]:
    """`key: old -> new` for each setting and artifact that differs from what the manifest recorded.

    Settings are compared one by one: one that this version added counts only when it is off its default,
    one that it dropped not at all (the record was written by another version of alignloop).
    """
    changes = []
    old_settings = entry.get("config") or {}
    if entry.get("inputs", {}).get("config") != current.fingerprints.get("config"):
        for key in sorted(set(old_settings) | set(current.settings)):
            if key not in current.settings:
                continue
            new = current.settings[key]
            if key not in old_settings:
                if key not in current.defaults or current.defaults[key] != new:
                    changes.append(f"{key}: (unset) -> {json.dumps(new)}")
            elif old_settings[key] != new:
                changes.append(f"{key}: {json.dumps(old_settings[key])} -> {json.dumps(new)}")
    old_inputs, old_notes = entry.get("inputs") or {}, entry.get("notes") or {}
    for name, new in current.fingerprints.items():
        if name == "config":
            continue
        old = old_inputs.get(name)
        if old != new:
            before = f"{old_notes.get(name, '?')} (content {old})" if old else "(not recorded)"
            changes.append(f"{name}: {before} -> {current.notes.get(name, '?')} (content {new})")
    for name in sorted(set(old_inputs) - set(current.fingerprints)):
        changes.append(f"{name}: {old_notes.get(name, '?')} (content {old_inputs[name]}) -> (no longer read)")
    return changes


# ---- the decision --------------------------------------------------------------------------

FRESH, RESUME, DONE = "fresh", "resume", "done"


@dataclass
class StagePlan:
    """What a stage does now: `fresh` (start), `resume` (same inputs, work in progress) or `done` (skip)."""

    action: str
    changes: list[str] = field(default_factory=list)
    forced: bool = False


def decide(entry: Optional[dict[str, Any]], current: StageInputs, has_work: bool, outputs_intact: bool) -> StagePlan:
    """Pure decision from the manifest entry, the current inputs and what is on disk.

    `has_work`: the stage left something (a finished artifact or checkpoints); `outputs_intact`: its
    finished artifact exists with the content id the manifest recorded.
    """
    if not has_work:
        return StagePlan(FRESH)
    if not entry:
        return StagePlan("changed", ["manifest.json has no record of how it was made"])
    if "inputs" not in entry:
        # Written by a version without content fingerprints: its record cannot be checked, only trusted.
        if entry.get("status") == "done" and outputs_intact:
            return StagePlan(DONE)
        return StagePlan(RESUME)
    changes = describe_changes(entry, current)
    if changes:
        return StagePlan("changed", changes)
    if entry.get("status") == "done":
        return StagePlan(DONE) if outputs_intact else StagePlan("changed", ["the finished artifact was changed or "
                                                                             "removed after the stage ended"])
    return StagePlan(RESUME)


# ---- the run directory side -----------------------------------------------------------------

def output_ids(entry: dict[str, Any]) -> set[str]:
    return set((entry.get("outputs") or {}).values())


def stale_dependents(stages: dict[str, dict[str, Any]], key: str) -> list[str]:
    """Stages whose recorded inputs include something `key` wrote, and those built on them in turn."""
    produced = output_ids(stages.get(key, {}))
    stale: list[str] = []
    frontier = set(produced)
    while frontier:
        found = set()
        for other, entry in stages.items():
            if other == key or other in stale:
                continue
            if frontier & set((entry.get("inputs") or {}).values()):
                stale.append(other)
                found |= output_ids(entry)
        frontier = found
    return stale


def plan_stage(run, key: str, current: StageInputs, *, final: Path, work: Iterable[Path], force: bool,
               log: Callable[[str], None], new_run_hint: str, cache: Optional[DigestCache] = None) -> StagePlan:
    """Decide whether stage `key` runs, resumes or is done; refuse or (with `force`) clear work from other inputs.

    `final`: the artifact the stage finishes with; `work`: what it leaves while running (checkpoints...),
    cleared on a forced restart. `new_run_hint`: the other way out named in the refusal (a new round or run
    directory).
    """
    cache = cache or DigestCache.for_run(run)
    entry = run.read_manifest()["stages"].get(key)
    work = [Path(p) for p in work]
    has_work = final.exists() or any(p.exists() for p in work)
    recorded = (entry or {}).get("outputs", {}).get("final")
    intact = final.exists() and (recorded is None or content_id(final, cache) == recorded)
    plan = decide(entry, current, has_work, intact)
    if plan.action != "changed":
        return plan
    if not force:
        dependents = stale_dependents(run.read_manifest()["stages"], key)
        built_on = f" (and mark {', '.join(dependents)} built on it as stale)" if dependents else ""
        raise StageInputsChanged(
            f"{key}: {final if final.exists() else 'its work so far'} was made from other inputs: "
            f"{'; '.join(plan.changes)}. Rerun with --force to replace it{built_on}, or {new_run_hint}")
    log(f"{key}: --force: replacing work made from other inputs ({'; '.join(plan.changes)})")
    run.mark_stale(stale_dependents(run.read_manifest()["stages"], key), reason=f"{key} was redone with --force")
    for path in work:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return StagePlan(FRESH, plan.changes, forced=True)


def record_started(run, key: str, current: StageInputs, **extra: Any) -> None:
    """Mark `key` running with the inputs it reads now (a new entry: nothing of an earlier run's record stays)."""
    run.mark_stage(key, "running", current.digest, reset=True, inputs=current.fingerprints, notes=current.notes,
                   config=current.settings, outputs={}, **extra)
    if current.cache is not None:
        current.cache.save()


def record_finished(run, key: str, current: StageInputs, artifact: Path, cache: Optional[DigestCache] = None,
                    **extra: Any) -> str:
    """Mark `key` done with the content id of what it wrote (`artifact`); returns that id."""
    cache = cache or DigestCache.for_run(run)
    produced = content_id(artifact, cache)
    cache.save()
    run.mark_stage(key, "done", current.digest, inputs=current.fingerprints, notes=current.notes,
                   config=current.settings, outputs={"final": produced}, finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   stale=None, **extra)
    return produced
