"""Bad input: one line naming the problem, a non-zero exit, no traceback, nothing destroyed."""

import hashlib
from pathlib import Path

import pytest

from conftest import TINY_PRETRAIN, run_cli


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_clean_failure(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("override, words", [
    ("data.path={missing}", ["does not exist", "missing.txt"]),
    ("data.path={empty}", ["empty"]),
    ("train.max_stepz=3", ["unknown config key", "train.max_stepz"]),
    ("train.max_steps=lots", ["train.max_steps", "lots"]),
    ("train.lr=1e38", ["train.lr", "less than or equal to 1000000"]),  # was a traceback inside AdamW
])
def test_bad_input_leaves_the_run_untouched(pretrained_run, tmp_path, override, words):
    (tmp_path / "empty.txt").write_text("\n\n")
    before = _snapshot(pretrained_run)
    override = override.format(missing=tmp_path / "missing.txt", empty=tmp_path / "empty.txt")
    result = run_cli("pretrain", "--run", str(pretrained_run), override, *TINY_PRETRAIN)
    _assert_clean_failure(result, *words)
    assert _snapshot(pretrained_run) == before


def test_corrupt_checkpoint_is_named(pretrained_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pretrained_run / "pretrain" / "final", broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    before = _snapshot(broken)
    result = run_cli("generate", "--checkpoint", str(broken), "--prompt", "Tom")
    _assert_clean_failure(result, "corrupt", str(broken))
    assert _snapshot(broken) == before

    (broken / "config.json").write_text("{not json")
    result = run_cli("sft", "--run", str(tmp_path / "r"), f"model.path={broken}")
    _assert_clean_failure(result, "config.json")


def test_sft_without_a_model_says_what_to_run(tmp_path):
    result = run_cli("sft", "--run", str(tmp_path / "fresh"))
    _assert_clean_failure(result, "alignloop pretrain")
