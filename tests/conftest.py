"""Fixtures shared across the test suite (keep each small and general)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# Before torch loads OpenMP: spinning waits make small matmuls far slower on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

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


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory) -> Path:
    """A run with tiny pretraining and SFT on the built-in stories, for loop tests (copy it; do not modify)."""
    run = tmp_path_factory.mktemp("loop") / "base"
    result = run_cli("pretrain", "--run", str(run), "model.preset=tiny", "data.stories=600", "data.seq_len=64",
                     "tokenizer.vocab_size=600", "train.max_steps=6", "train.batch_size=4", "train.samples=0",
                     "train.eval_batches=1", "train.threads=1")
    assert result.returncode == 0, result.stderr
    result = run_cli("sft", "--run", str(run), "train.max_steps=2", "train.batch_size=2", "train.samples=0",
                     "train.eval_batches=1", "data.max_len=64", "train.threads=1")
    assert result.returncode == 0, result.stderr
    return run


# ---- feedback store: SQLite file, or a database on a throwaway PostgreSQL server ----------

@pytest.fixture(scope="session")
def postgres_server():
    """URL of a PostgreSQL server started on loopback for this test session (skips if impossible)."""
    from alignloop.feedback import pgtemp

    reason = pgtemp.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pgtemp.temporary_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path: Path) -> str:
    """A fresh, empty feedback database: a SQLite file, then a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.db")
    from alignloop.feedback import pgtemp

    server = request.getfixturevalue("postgres_server")
    return pgtemp.create_database(server, f"test_{os.getpid()}_{random.randrange(1 << 30)}")


# ---- stage 4 (RL): a tiny run with a policy, a reward model and prompts ------------------------

RL_PROMPTS = ["Tom went to the park.", "Mia saw a cat.", "Ben", "Lily went to the beach. Lily saw a big kite.",
              "Sam was happy.", "Anna went to the town.", "Max saw a dog.", "Zoe"]
# Settings that make an RL stage take seconds on the tiny run.
TINY_RL = ["sampling.max_new_tokens=12", "sampling.batch_size=8", "run.threads=1", "run.sample_table_every=1",
           "run.sample_table_rows=2"]


@pytest.fixture(scope="session")
def rl_run_template(pretrained_run, tmp_path_factory) -> Path:
    """The tiny pretrained run plus a reward model in rounds/001/reward/final and a prompt file (do not modify)."""
    import json
    import shutil

    from alignloop.reward.model import RewardStats, build_reward_model

    root = tmp_path_factory.mktemp("rl") / "run"
    shutil.copytree(pretrained_run, root)
    torch.manual_seed(0)
    reward = build_reward_model(root / "pretrain" / "final")
    reward.stats = RewardStats(mean=0.1, std=2.0, n=10)
    reward.save(root / "rounds" / "001" / "reward" / "final")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in RL_PROMPTS))
    return root


@pytest.fixture
def rl_run(rl_run_template, tmp_path) -> Path:
    """A fresh copy of `rl_run_template` that a test may change."""
    import shutil

    target = tmp_path / "run"
    shutil.copytree(rl_run_template, target)
    return target


@pytest.fixture
def single_thread():
    """One torch thread for the test: on a shared 2-core machine, two threads that wait on each other
    made a tiny model's matmuls over 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (never a downloaded browser)."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: models this small gain nothing from a second, and on a busy
    machine every op would wait for it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    """A tiny decoder backbone for reward models, built once per module."""
    from reward_helpers import tiny_decoder

    return tiny_decoder(tmp_path_factory.mktemp("decoder"))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny encoder backbone for reward models, built once per module."""
    from reward_helpers import tiny_encoder

    return tiny_encoder(tmp_path_factory.mktemp("encoder"))
