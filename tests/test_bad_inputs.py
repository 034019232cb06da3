"""Fuzz over malformed input, through the CLI as a user runs it: `feedback import`, `reward`, `sft` and
`pretrain` with a bad `data.path`, a hand-edited manifest, a full disk.

Every case must end in one line on stderr (`error: ...` naming the file, and the line when there is
one), exit code 2, and the run directory exactly as it was (every file and folder, byte for byte).
Validation comes before any model is loaded, so each case costs one process start.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_PRETRAIN, cli_env, run_cli, write_tiny_corpus
from test_cli_errors import _assert_clean_failure, _snapshot

GOOD_TRL = json.dumps({"prompt": "Tom went to the park.", "chosen": "Tom was happy.", "rejected": "Tom Tom Tom."})
GOOD_SFT = json.dumps({"prompt": "Tom went to the park.", "response": "Tom was happy. The end."})
GOOD_TEXT = json.dumps({"text": "Tom went to the park. Tom was happy. The end."})
DEEP = "[" * 100_000 + "]" * 100_000
RICH = {"prompt": "p", "responses": [{"id": 4, "text": "r1"}, {"id": 5, "text": "r2"}, {"id": 6, "text": "r3"}]}


def _gzip_corrupt(text: str) -> bytes:
    packed = bytearray(gzip.compress(text.encode() * 50))
    packed[20:40] = bytes(b ^ 0xFF for b in packed[20:40])  # a broken deflate stream, header intact
    return bytes(packed)


def _gzip_truncated(text: str) -> bytes:
    return gzip.compress(text.encode() * 50)[:-12]


def _lines(*lines: str, end: str = "\n") -> bytes:
    return ("\n".join(lines) + end).encode("utf-8")


# name -> (file name, content, extra CLI arguments, words the one line must hold)
IMPORT_CASES = {
    "not JSON": ("in.jsonl", _lines(GOOD_TRL, "{oops"), [], ["in.jsonl line 2", "not valid JSON"]),
    "truncated last line": ("in.jsonl", _lines(GOOD_TRL, GOOD_TRL[:30], end=""), [], ["line 2", "not valid JSON"]),
    "deeply nested": ("in.jsonl", _lines(GOOD_TRL, DEEP), [], ["line 2", "nested deeper"]),
    "lone surrogate": ("in.jsonl", _lines(GOOD_TRL, '{"prompt": "p\\ud800", "chosen": "a", "rejected": "b"}'), [],
                       ["line 2", "surrogate"]),
    "overlap 1e30": ("in.jsonl", _lines('{"prompt": "p", "responses": ["a", "b"], "overlap": 1e30}'), [],
                     ["line 1", "'overlap'"]),
    "overlap true": ("in.jsonl", _lines('{"prompt": "p", "responses": ["a", "b"], "overlap": true}'), [],
                     ["line 1", "'overlap'"]),
    "NaN": ("in.jsonl", _lines(GOOD_TRL, '{"prompt": "p", "chosen": "a", "rejected": "b", "score": NaN}'), [],
            ["line 2", "NaN"]),
    "NUL": ("in.jsonl", _lines('{"prompt": "p\\u0000", "chosen": "a", "rejected": "b"}'), [], ["line 1", "NUL"]),
    "huge int": ("in.jsonl", _lines('{"prompt": "p", "responses": ["a"], "overlap": ' + "9" * 5000 + "}"), [],
                 ["line 1", "too long"]),
    "TRL without rejected": ("in.jsonl", _lines(GOOD_TRL, '{"prompt": "p", "chosen": "a"}'), [],
                             ["line 2", "no 'rejected'"]),
    "TRL told hh": ("trl.jsonl", _lines(GOOD_TRL), ["--format", "hh"], ["line 1", "pass --format trl"]),
    "HH told responses": ("hh.jsonl", _lines(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b",
                                                         "rejected": "\n\nHuman: a\n\nAssistant: c"})),
                          ["--format", "responses"], ["line 1", "pass --format hh"]),
    "not an object": ("in.jsonl", _lines("[1, 2]"), ["--format", "trl"], ["line 1", "expected a JSON object"]),
    "corrupt gzip": ("in.jsonl.gz", _gzip_corrupt(GOOD_TRL + "\n"), [], ["in.jsonl.gz is a damaged gzip file"]),
    "truncated gzip": ("in.jsonl.gz", _gzip_truncated(GOOD_TRL + "\n"), [], ["damaged gzip"]),
    "not UTF-8": ("in.jsonl", _lines(GOOD_TRL) + b'{"prompt": "\xff"}\n', [], ["line 2", "not UTF-8"]),
    "empty": ("in.jsonl", b"\n \n", [], ["holds no records"]),
}

REWARD_CASES = {
    "truncated last line": ("p.jsonl", _lines(GOOD_TRL, GOOD_TRL[:30], end=""), ["p.jsonl line 2", "not valid JSON"]),
    "deeply nested": ("p.jsonl", _lines(GOOD_TRL, DEEP), ["line 2", "nested deeper"]),
    "corrupt gzip": ("p.jsonl.gz", _gzip_corrupt(GOOD_TRL + "\n"), ["damaged gzip"]),
    "TRL without rejected": ("p.jsonl", _lines(GOOD_TRL, '{"prompt": "p", "chosen": "a"}'), ["line 2", "rejected"]),
    "rich ratings a list": ("p.jsonl", _lines(GOOD_TRL, json.dumps({**RICH, "kind": "rating", "ratings": [5]})),
                            ["line 2", "'ratings'"]),
    "rich ranking of unknown ids": ("p.jsonl", _lines(GOOD_TRL, json.dumps({**RICH, "ranking": [4, 9]})),
                                    ["line 2", "9 is not the id"]),
    "rich choice unknown": ("p.jsonl", _lines(GOOD_TRL, json.dumps({"prompt": "p", "responses": ["a", "b"],
                                                                     "choice": "zz"})), ["line 2", "'choice'"]),
    "rich strength text": ("p.jsonl", _lines(GOOD_TRL, json.dumps({"prompt": "p", "responses": ["a", "b"],
                                                                    "choice": "a", "strength": "x"})),
                           ["line 2", "'strength'"]),
}

SFT_CASES = {
    "messages a string": ("s.jsonl", _lines(GOOD_SFT, '{"messages": "hello"}'), ["s.jsonl line 2", "'messages'"]),
    "deeply nested": ("s.jsonl", _lines(GOOD_SFT, DEEP), ["line 2", "nested deeper"]),
    "corrupt gzip": ("s.jsonl.gz", _gzip_corrupt(GOOD_SFT + "\n"), ["s.jsonl.gz is a damaged gzip file"]),
}

PRETRAIN_CASES = {
    "corrupt gzip": ("c.txt.gz", _gzip_corrupt("Tom went to the park.\n\n"), ["c.txt.gz is a damaged gzip file"]),
    "deeply nested": ("c.jsonl", _lines(GOOD_TEXT, DEEP), ["c.jsonl line 2", "nested deeper"]),
    "lone surrogate": ("c.jsonl", _lines(GOOD_TEXT, '{"text": "Mia \\ud83d saw a cat."}'), ["line 2", "surrogate"]),
}


def snapshot(run: Path) -> dict[str, str]:
    """Every file with its content hash, and every folder, under `run`."""
    return {**_snapshot(run), **{str(p.relative_to(run)) + "/": "" for p in run.rglob("*") if p.is_dir()}}


def refused(result: subprocess.CompletedProcess, run: Path, before: dict[str, str], words: list[str]) -> None:
    _assert_clean_failure(result, *words)
    assert result.returncode == 2
    assert snapshot(run) == before


@pytest.fixture(scope="module")
def trained_run(pretrained_run, tmp_path_factory) -> Path:
    """The tiny pretrained run with a feedback store holding one imported pair (copied per case)."""
    root = tmp_path_factory.mktemp("bad_inputs") / "run"
    shutil.copytree(pretrained_run, root)
    source = root.parent / "one.jsonl"
    source.write_text(GOOD_TRL + "\n")
    assert run_cli("feedback", "import", str(source), "--run", str(root)).returncode == 0
    return root


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def _write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", IMPORT_CASES)
def test_feedback_import(run, tmp_path, case):
    name, content, args, words = IMPORT_CASES[case]
    path = _write(tmp_path, name, content)
    before = snapshot(run)
    refused(run_cli("feedback", "import", str(path), "--run", str(run), *args), run, before, words)


def test_feedback_import_of_a_missing_file_or_into_a_new_run_creates_nothing(tmp_path):
    bad = _write(tmp_path, "bad.jsonl", _lines("{oops"))
    result = run_cli("feedback", "import", str(bad), "--run", str(tmp_path / "new"))
    _assert_clean_failure(result, "bad.jsonl line 1")
    assert result.returncode == 2 and not (tmp_path / "new").exists()
    result = run_cli("feedback", "import", str(tmp_path / "missing.jsonl"), "--run", str(tmp_path / "new"))
    _assert_clean_failure(result, "missing.jsonl does not exist")
    assert not (tmp_path / "new").exists()


STAGE_CASES = {**{("reward", case): value for case, value in REWARD_CASES.items()},
               **{("sft", case): value for case, value in SFT_CASES.items()}}


@pytest.mark.parametrize(("stage", "case"), STAGE_CASES)
def test_reward_and_sft_data_path(run, tmp_path, stage, case):
    name, content, words = STAGE_CASES[stage, case]
    path = _write(tmp_path, name, content)
    before = snapshot(run)
    refused(run_cli(stage, "--run", str(run), f"data.path={path}", "train.max_steps=1"), run, before, words)


@pytest.mark.parametrize("case", PRETRAIN_CASES)
def test_pretrain_data_path(tmp_path, case):
    name, content, words = PRETRAIN_CASES[case]
    path = _write(tmp_path, name, content)
    run = tmp_path / "run"
    run.mkdir()
    refused(run_cli("pretrain", "--run", str(run), f"data.path={path}", "train.max_steps=1", *TINY_PRETRAIN),
            run, {}, words)


@pytest.mark.parametrize("manifest", ["[]", '{"stages": ["pretrain"]}', '{"stages": "pretrain"}'])
def test_a_hand_edited_manifest(run, tmp_path, manifest):
    (run / "manifest.json").write_text(manifest)
    data = _write(tmp_path, "sft.jsonl", _lines(GOOD_SFT))
    before = snapshot(run)
    refused(run_cli("sft", "--run", str(run), f"data.path={data}", "train.max_steps=1"), run, before,
            ["manifest.json is corrupt", "fix or delete it"])


@pytest.mark.postgres
def test_postgresql_import_refuses_what_it_cannot_store(postgres_server, tmp_path):
    from alignloop.feedback import open_store, pgtemp

    url = pgtemp.create_database(postgres_server, f"bad_inputs_{os.getpid()}")
    for case in ("NaN", "NUL", "huge int", "overlap 1e30", "lone surrogate"):
        name, content, args, words = IMPORT_CASES[case]
        result = run_cli("feedback", "import", str(_write(tmp_path, name, content)), "--db", url, *args)
        _assert_clean_failure(result, *words)
        assert result.returncode == 2
    with open_store(url) as store:
        assert store.counts()["prompts"] == 0


def test_import_leaves_out_what_teaches_nothing_and_a_second_import_adds_nothing(run, tmp_path):
    same = json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"})
    path = _write(tmp_path, "prefs.jsonl", _lines(GOOD_TRL.replace("park", "beach"), same, GOOD_TRL))
    first = run_cli("feedback", "import", str(path), "--run", str(run))
    assert first.returncode == 0, first.stderr
    assert first.stderr.strip() == (f"imported 1 trl records as 1 items from {path}; 1 trl records were already in "
                                    f"the store (imported before); left out 1 chosen identical to rejected (line 2)")
    before = snapshot(run)
    again = run_cli("feedback", "import", str(path), "--run", str(run))
    assert again.returncode == 0 and again.stderr.startswith(f"nothing new imported from {path}; 2 trl records")
    assert snapshot(run) == before


# ---- a full disk: a real ENOSPC, from a small tmpfs mounted in a private mount namespace ----------

UNSHARE = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
MOUNT = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'


def disk_full(result: subprocess.CompletedProcess, words: str) -> None:
    """After the stage's progress lines, its last word is one error line (no traceback), exit 2."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith(f"error: {words}") and sum(line.startswith("error") for line in lines) == 1, lines


def on_small_disk(size: str, mount: Path, *args: str) -> subprocess.CompletedProcess:
    """`alignloop ARGS` with a fresh tmpfs of `size` mounted at `mount`, seen by that process alone."""
    return subprocess.run([*UNSHARE, "sh", "-c", MOUNT, "sh", size, str(mount), sys.executable, "-m", "alignloop",
                           *args], capture_output=True, text=True, env=cli_env(), timeout=300)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory) -> Path:
    mount = tmp_path_factory.mktemp("small_disk")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here to mount a small tmpfs")
    probe = subprocess.run([*UNSHARE, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(mount)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()}")
    return mount


# Sizes at which the tiny pretraining fills the disk in different writers (measured at the time of
# writing): the tokenizer (Rust), metrics.jsonl, safetensors (Rust), torch.save of the optimizer state.
@pytest.mark.parametrize("size", ["8k", "28k", "300k", "2500k"])
def test_a_full_disk_during_pretraining_is_one_line_naming_the_file(small_disk, tmp_path, size):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    run = small_disk / "run"
    settings = [a.replace("train.log_every=5", "train.log_every=1") for a in TINY_PRETRAIN]
    result = on_small_disk(size, small_disk, "pretrain", "--run", str(run), f"data.path={corpus}",
                           "train.max_steps=4", "train.save_every=4", *settings)
    disk_full(result, f"no space left on device while writing {run}/")


def test_a_full_disk_during_import_is_one_line(small_disk, tmp_path):
    records = [json.dumps({"prompt": f"Prompt number {i} " + "x" * 100, "chosen": "y" * 80, "rejected": "z" * 80})
               for i in range(3000)]
    path = _write(tmp_path, "many.jsonl", _lines(*records))
    result = on_small_disk("300k", small_disk, "feedback", "import", str(path), "--run", str(small_disk / "run"))
    disk_full(result, "no space left on device while writing the feedback store")


def test_what_counts_as_a_full_disk(tmp_path):
    from alignloop.errors import is_disk_full

    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(Exception("No space left on device (os error 28)"))  # tokenizers
    assert is_disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert is_disk_full(RuntimeError("(sqlite3.OperationalError) database or disk is full"))
    short_write = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 551552 vs 551440")
    assert not is_disk_full(short_write)  # without a folder to look at, a broken stream is not a full disk
    assert not is_disk_full(short_write, str(tmp_path))  # nor with room left there
    assert not is_disk_full(OSError(13, "Permission denied")) and not is_disk_full(ValueError("bad"))
