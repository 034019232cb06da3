"""README's "Your own data" section, run as written: the commands a new user types on their own files.

The test writes small files under the names the section uses (`my_corpus.txt`, ...) into an empty
folder and runs every command of the section's fenced block there, in order, as they are printed
(`alignloop` is this checkout's code), so the README cannot drift from the code.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import NAMES, PLACES, ROOT, THINGS, cli_env, write_tiny_corpus

SECTION = "## Your own data"


def readme_commands() -> list[str]:
    """The commands of the section's ```sh blocks (a line ending in a backslash goes on)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"\n{SECTION}\n" in text, f"README.md has no {SECTION!r} section"
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M):
        pending = ""
        for line in block.splitlines():
            line = pending + line.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def write_user_files(folder: Path) -> list[Path]:
    """Small stand-ins for a user's own text, SFT pairs, preference pairs and prompts."""
    rng = random.Random(0)

    def opening() -> str:
        return f"{rng.choice(NAMES)} went to the {rng.choice(PLACES)}."

    def jsonl(name: str, records: list[dict]) -> Path:
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return path

    things = [rng.choice(THINGS) for _ in range(40)]
    return [
        write_tiny_corpus(folder / "my_corpus.txt", n=200),
        jsonl("my_sft.jsonl", [{"prompt": opening(), "response": f" She saw a {t}. The {t} was nice. The end."}
                               for t in things]),
        jsonl("my_prefs.jsonl", [{"prompt": opening(), "chosen": f" The {t} was very nice. They were happy. The end.",
                                  "rejected": f" The {t} was bad. bad bad bad"} for t in things]),
        jsonl("my_prompts.jsonl", [{"prompt": opening()} for _ in range(16)]),
    ]


def run_as_written(command: str, folder: Path) -> subprocess.CompletedProcess:
    # `alignloop` is this checkout's code run by this interpreter, whatever is on PATH.
    preamble = f'alignloop() {{ {shlex.quote(sys.executable)} -m alignloop "$@"; }}\n'
    return subprocess.run(["bash", "-c", preamble + command], cwd=folder, env=cli_env(), capture_output=True,
                          text=True, timeout=600)


def test_readme_own_data_section_runs_as_written(tmp_path):
    commands = readme_commands()
    assert len(commands) >= 5 and all(c.startswith("alignloop ") for c in commands), commands
    stages = [c.split()[1] for c in commands]
    for stage in ("pretrain", "sft", "reward", "ppo", "eval"):
        assert stage in stages, f"the walk-through has no `alignloop {stage}`"
    files = write_user_files(tmp_path)
    named = set(re.findall(r"\bmy_\w+\.\w+", " ".join(commands)))
    assert {f.name for f in files} <= named, f"README names {sorted(named)}; the test writes {[f.name for f in files]}"
    assert not (tmp_path / "runs").exists()  # a fresh run directory

    outputs = {}
    for command in commands:
        result = run_as_written(command, tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, \
            f"`{command}` failed ({result.returncode}):\n{result.stderr[-3000:]}"
        outputs[command.split()[1]] = result

    run = tmp_path / "runs" / "mine"
    for final in ("pretrain/final", "sft/final", "rounds/001/reward/final", "rounds/001/policy/final"):
        assert (run / final / "config.json").is_file(), final
    figures = json.loads((tmp_path / "my_eval.json").read_text())
    assert figures["n"] == 16 and 0 <= figures["rm_win_rate"] <= 1 and figures["prompts"] == "my_prompts.jsonl"
    # Your own prompts are not the built-in story task's: no gold judge there, and the result says why.
    assert figures["gold_win_rate"] is None and "gold judge scores" in figures["gold_omitted"]
    # Without a terminal the log lines carry the ETA; a short run's warmup is cut and says so.
    assert re.search(r"pretrain step (\d+)/\1 .* eta 0:00", outputs["pretrain"].stderr), outputs["pretrain"].stderr
    assert re.search(r"sft: warmup of \d+ steps instead of train.warmup_steps=20", outputs["sft"].stderr)
    if "generate" in outputs:
        assert outputs["generate"].stdout.strip()
    if "report" in outputs:
        assert (run / "report.html").is_file()
