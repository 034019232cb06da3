"""One round of a demo-size loop run trained again with other settings, the rounds before it untouched.

    OMP_NUM_THREADS=1 .venv/bin/python bench/loop_round.py --run runs/X --round 3 [SETTING=VALUE ...]

The settings are the demo's loop settings (`alignloop.loop.demo.DEMO_LOOP`) with four answers a prompt in the
evaluation, then the ones given, as `alignloop loop` reads them. Only round --round runs, with --force: its
sampling, feedback and reward model are reused when their inputs are unchanged, and the stages whose inputs
changed (typically its PPO and evaluation) are done again, named in the log. `alignloop loop` itself would
also redo the earlier rounds when a setting they share changes (say `ppo.ppo.min_lr_ratio`); this asks what
the change does to one round from the same start. Printed: the round's evaluation (rounds/NNN/eval.json).
BENCHMARKS.md, "The demo", has the figures (runs R, S, U and V).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a loop run whose earlier rounds are done")
    parser.add_argument("--round", type=int, required=True, help="the round to train again")
    parser.add_argument("settings", nargs="*", help="loop settings after the demo's (SETTING=VALUE)")
    args = parser.parse_args()

    from alignloop.config.base import load_config
    from alignloop.loop.config import LoopConfig
    from alignloop.loop.demo import DEMO_LOOP
    from alignloop.loop.rounds import run_round
    from alignloop.runs import RunDir

    cfg = load_config(LoopConfig, None, DEMO_LOOP + ["eval.samples_per_prompt=4"] + args.settings)
    result = run_round(RunDir(Path(args.run)), cfg, args.round, False,
                       lambda message: print(message, file=sys.stderr, flush=True), force=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
