"""Fixtures shared across the test suite (keep each small and general)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests never reach the network and never fight over the two cores.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, torch.get_num_threads()))


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    """Run `alignloop ARGS` in a fresh process, as a user would; returns the completed process."""
    return subprocess.run([sys.executable, "-m", "alignloop", *args], capture_output=True, text=True,
                          env=cli_env(**(env or {})), timeout=timeout, cwd=cwd)


NAMES = ["Tom", "Mia", "Ben", "Lily", "Sam", "Anna", "Max", "Zoe"]
THINGS = ["ball", "kite", "cat", "boat", "cake", "tree", "book", "dog"]
PLACES = ["park", "garden", "house", "beach", "forest", "town"]


def write_tiny_corpus(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A small templated corpus: enough for a few real training steps."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        name, thing, place = rng.choice(NAMES), rng.choice(THINGS), rng.choice(PLACES)
        stories.append(f"{name} went to the {place}. {name} saw a {thing}. "
                       f"The {thing} was very nice. {name} was happy. The end.")
    path.write_text("\n\n".join(stories) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return write_tiny_corpus(tmp_path / "corpus.txt")


# Settings that make a pretraining run take seconds: tiny model, short blocks, few steps.
TINY_PRETRAIN = [
    "model.preset=tiny", "tokenizer.vocab_size=400", "data.seq_len=32", "train.batch_size=4",
    "train.warmup_steps=2", "train.eval_every=1000", "train.eval_batches=2", "train.samples=0",
    "train.log_every=5", "train.threads=1",
]


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory) -> Path:
    """A run directory with a finished tiny pretraining (shared by tests that only read it)."""
    root = tmp_path_factory.mktemp("pretrained")
    corpus = write_tiny_corpus(root / "corpus.txt")
    run = root / "run"
    result = run_cli("pretrain", "--run", str(run), f"data.path={corpus}", "train.max_steps=8",
                     "train.save_every=4", *TINY_PRETRAIN)
    assert result.returncode == 0, result.stderr
    return run
