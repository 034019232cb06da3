"""Whether the gold judge may score a set of prompts: only the built-in story task's.

The gold judge is the noiseless preference of the built-in story task (kind,
on-character, ends properly). On any other prompts (a user's own chat data,
HH-RLHF) its number would look like a measurement and mean nothing, so
evaluation leaves it out and says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from alignloop.runs import RunDir
from alignloop.stages import builtin_paths, read_prompts

# The files of the built-in task that hold prompts (story openings).
PROMPT_FILES = ("prompts", "eval_prompts", "sft")


def builtin_prompts(run: RunDir) -> set[str]:
    """Every opening of the run's built-in story task (empty when the run has no built-in data)."""
    found: set[str] = set()
    for kind in PROMPT_FILES:
        path = builtin_paths(run)[kind]
        if path.exists():
            found.update(read_prompts(path))
    return found


def gold_omission(run: RunDir, prompts: Sequence[str], source: Path | str) -> Optional[str]:
    """None when every prompt is one of the built-in task's; else why the gold judge is left out."""
    known = builtin_prompts(run)
    if not known:
        return (f"the gold judge scores the built-in story task only, and {run.root} has none "
                f"(no {builtin_paths(run)['eval_prompts'].name})")
    outside = sum(1 for p in prompts if p not in known)
    if outside:
        return (f"{outside} of {len(prompts)} prompts from {source} are not the built-in story task's; "
                f"the gold judge scores that task only")
    return None
