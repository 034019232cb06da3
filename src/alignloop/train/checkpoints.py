"""Training checkpoints: written atomically, the last K kept, resumed exactly.

A stage folder (e.g. `runs/a/pretrain/`) holds

    checkpoints/step-000100/   HF model + tokenizer + training_state.pt + checksums.json
    final/                     HF model + tokenizer, written when the stage ends

`checksums.json` holds the sha256 of every other file of the checkpoint: a
checkpoint damaged on disk after it was written (a bad sector, a partial copy
back from a backup) is set aside as `.corrupt-step-NNNNNN` and the previous
intact one is resumed instead.

`training_state.pt` carries what exact resume needs besides the weights: the
optimizer, the step, the RNG states and anything the stage adds (a KL
controller, the best validation score...).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from alignloop.atomic import atomic_directory, clean_stale_temporaries
from alignloop.errors import CheckpointError, TrainingError
from alignloop.provenance import sha256_file
from alignloop.train import distributed

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "training_state.pt"
CHECKSUMS_FILE = "checksums.json"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_pretrained(directory: Path, model, tokenizer=None, state_dict=None, merged: bool = True) -> None:
    """HF `save_pretrained` of the model (safetensors) and the tokenizer into `directory`.

    `model` may be wrapped by the launcher (`distributed.unwrap` takes it out). `state_dict`: the
    gathered weights when an engine shards them (`distributed.full_state_dict`).
    A LoRA model writes its adapter into `adapter/`, and with `merged` (finished models) the merged
    weights as an ordinary HF checkpoint too; training checkpoints pass merged=False and hold the
    adapter alone (the frozen base is the stage's start checkpoint).
    """
    from alignloop.models.lora import is_lora, save_lora

    unwrapped = distributed.unwrap(model)
    if is_lora(unwrapped):
        save_lora(Path(directory), unwrapped, merged=merged, gathered=state_dict)
    else:
        kwargs = {"state_dict": state_dict} if state_dict is not None else {}
        unwrapped.save_pretrained(str(directory), safe_serialization=True, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def _gathered(models: dict[str, Any], merged: bool) -> dict[str, Any]:
    # Collective under FSDP, so every process gathers before rank 0 writes.
    return {name: distributed.full_state_dict(model, merged) for name, model in models.items()}


def save_final(target: Path, model, tokenizer=None, extra_files: dict[str, str] | None = None) -> None:
    """Write a finished checkpoint to `target` atomically (it appears whole or not at all).

    With several processes rank 0 writes it and the others wait for it.
    """
    weights = _gathered({"model": model}, merged=True)["model"]
    if distributed.is_main():
        with atomic_directory(target) as tmp:
            save_pretrained(tmp, model, tokenizer, weights)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
    distributed.barrier()


def checkpoint_steps(stage_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(stage_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    clean_stale_temporaries(folder)
    found = []
    for entry in folder.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and (entry / STATE_FILE).exists():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def write_checksums(folder: Path) -> None:
    """Record the sha256 of every file under `folder` in `folder/checksums.json`."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)
    sums = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    (Path(folder) / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=1), encoding="utf-8")


def checkpoint_damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint's files against its checksums.json, or None when intact
    (a checkpoint written before checksums were kept is taken as it is)."""
    listing = Path(folder) / CHECKSUMS_FILE
    if not listing.exists():
        return None
    try:
        sums = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{CHECKSUMS_FILE} is unreadable"
    for name, expected in sums.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != expected:
            return f"{name} does not match its checksum"
    return None


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest intact training checkpoint of a stage, or None.

    A damaged one is renamed `.corrupt-step-N` (kept for inspection, never resumed) and the one before it
    is taken. With several processes rank 0 checks and the others then find what it left.
    """
    with distributed.main_first():
        if distributed.is_main():
            for _, folder in reversed(checkpoint_steps(stage_dir)):
                damage = checkpoint_damage(folder)
                if damage is None:
                    break
                aside = folder.parent / f".corrupt-{folder.name}"
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(folder, aside)
                print(f"warning: checkpoint {folder} is damaged ({damage}); set aside as {aside.name}, resuming "
                      f"from the one before it", file=sys.stderr)
    steps = checkpoint_steps(stage_dir)
    return steps[-1][1] if steps else None


def _finite(*models) -> bool:
    """Whether every floating-point weight of `models` is finite, on every process (each checks its shard)."""
    bad = any(not torch.isfinite(distributed.local(p)).all()
              for model in models for p in model.parameters() if p.is_floating_point())
    return distributed.all_reduce_max(float(bad)) == 0.0


def save_training_checkpoint(stage_dir: Path, step: int, model, tokenizer, optimizer,
                             keep_last: int = 2, extra_state: dict[str, Any] | None = None,
                             extra_models: dict[str, Any] | None = None) -> Path:
    """Atomically write `checkpoints/step-NNNNNN/` and prune all but the newest `keep_last`.

    `extra_models` (name -> model) are saved in subfolders, e.g. PPO's critic.
    With several processes rank 0 writes it and the others wait for it. The
    optimizer state is whole (`distributed.optimizer_state`: gathered under
    FSDP), so any number of processes, with any engine, resumes from it.
    """
    target = Path(stage_dir) / "checkpoints" / f"step-{step:06d}"
    if not _finite(model, *(extra_models or {}).values()):
        # The loss check sees a blow-up one step late: the update that made the weights inf has already run.
        raise TrainingError(f"{Path(stage_dir).name}: the weights became inf or NaN by step {step}; lower the "
                            f"learning rate (the last checkpoint in {Path(stage_dir) / 'checkpoints'} is intact)")
    weights = _gathered({"": model, **(extra_models or {})}, merged=False)
    optimizer_state = distributed.optimizer_state(optimizer) if optimizer is not None else None
    if distributed.is_main():
        with atomic_directory(target) as tmp:
            save_pretrained(tmp, model, tokenizer, weights[""], merged=False)
            for name, other in (extra_models or {}).items():
                save_pretrained(tmp / name, other, state_dict=weights[name], merged=False)
            state = {"step": step, "optimizer": optimizer_state,
                     "rng": rng_state(), **(extra_state or {})}
            torch.save(state, tmp / STATE_FILE)
            write_checksums(tmp)
        for _, old in checkpoint_steps(stage_dir)[:-max(1, keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return target


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    """The `training_state.pt` of a checkpoint; a clear error if it is corrupt."""
    try:
        return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"training state in {checkpoint} is corrupt: {str(exc).splitlines()[0][:200]}; "
                              f"delete that folder to resume from an earlier one") from None
