"""Does the reward model pay for length? Plain training against the `loss.length` methods, on HH helpful.

Trains a reward model on lines 1-1200 of `../shared/data/hh_helpful_base_train_dev.jsonl.gz` with the
MiniLM recipe of `bench/reward_hh.py` (its settings, its backbone), plus one configuration of
`loss.length`, then scores it once on each of

- `hh_helpful_base_train_dev` lines 1201-1500 (unseen pairs of the training kind),
- `hh_helpful_online_test` and `hh_helpful_rejection_sampled_test` (other models' replies, other labellers),

and prints one JSON line: per split the accuracy, the accuracy where people chose the shorter and the longer
reply, the "longer wins" baseline, how often the model prefers the longer reply, Spearman's rank correlation of
reward with length (characters), and the accuracy on pairs with a reply cut at max_length; plus the two test
splits pooled (accuracies weighted by pairs). Usage, one configuration and seed per command:

    PYTHONPATH=src python bench/reward_length.py plain --seed 0
    PYTHONPATH=src python bench/reward_length.py odin --seed 0 [override ...]

`--model DIR [DIR ...]` scores already trained models instead of training one: several (e.g. one method's
seeds) are scored together, by the mean of their normalised rewards. With `--keep-response start|end|both`
it reads replies too long to fit by another rule, at `--max-length`: which part of a cut reply carries the
preference.
`--cut-table` trains nothing: it prints the share of replies (and of whole inputs) that the MiniLM backbone
would read cut at several max_length values, per file. `--summarise FILE...` reads the JSON lines of earlier
runs and prints a markdown table, one row per method: the mean over its seeds (min-max).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward_hh import ROOT, SETTINGS, minilm_path  # noqa: E402  (the recipe and backbone of bench/reward_hh.py)

SHARED = ROOT.parent / "shared" / "data"
TRAIN = SHARED / "hh_helpful_base_train_dev.jsonl.gz"
SPLITS = {
    "base_dev": (TRAIN, "1201-1500"),
    "online": (SHARED / "hh_helpful_online_test.jsonl.gz", None),
    "rejection_sampled": (SHARED / "hh_helpful_rejection_sampled_test.jsonl.gz", None),
}
TESTS = ("online", "rejection_sampled")
# The MiniLM recipe at 256 tokens: 0.5% / 8.7% / 1.5% of the base / online / rejection-sampled replies are cut
# (BENCHMARKS.md, "Length"), at about two thirds of the cost of 512. Statistics from 200 responses: they are
# only PPO's normalisation, which this benchmark does not use.
RECIPE = [*SETTINGS["minilm"], "model.max_length=256", "train.stats_responses=200"]
METHODS = {
    "plain": [],
    "odin": ["loss.length.odin=1", "loss.length.orthogonal=1"],
    "covariate": ["loss.length.covariate=true"],
    "balance": ["loss.length.balance=4"],
    "covariate_x1.5": ["loss.length.covariate=true", "loss.length.covariate_scale=1.5"],
    "covariate_x2": ["loss.length.covariate=true", "loss.length.covariate_scale=2"],
    "covariate_balance": ["loss.length.covariate=true", "loss.length.balance=4"],
    "balance_covariate_x0.5": ["loss.length.balance=4", "loss.length.covariate=true", "loss.length.covariate_scale=0.5"],
}


def split_figures(figures: dict) -> dict:
    """The figures of one split that the length question needs."""
    length, cut = figures["length"], figures.get("truncation") or {}
    return {"n": figures["n"], "accuracy": figures["accuracy"], "accuracy_ci": figures["accuracy_ci"],
            "chosen_shorter": length["chosen_shorter"]["accuracy"], "n_shorter": length["chosen_shorter"]["n"],
            "chosen_longer": length["chosen_longer"]["accuracy"], "n_longer": length["chosen_longer"]["n"],
            "longer_wins": length["longer_wins_accuracy"], "prefers_longer": length["model_prefers_longer"],
            "spearman": length["reward_length_spearman"],
            "cut": (cut.get("cut") or {}).get("accuracy"), "n_cut": (cut.get("cut") or {}).get("n")}


def pooled(per_split: dict, names=TESTS) -> dict:
    """Accuracies over the named splits together (each a mean over its pairs, so weighted by pairs)."""
    def weighted(key: str, count: str) -> float:
        total = sum(per_split[s][count] for s in names)
        return sum(per_split[s][key] * per_split[s][count] for s in names if per_split[s][key] is not None) / total

    return {"n": sum(per_split[s]["n"] for s in names), "accuracy": weighted("accuracy", "n"),
            "chosen_shorter": weighted("chosen_shorter", "n_shorter"),
            "chosen_longer": weighted("chosen_longer", "n_longer"),
            "spearman_mean": sum(per_split[s]["spearman"] for s in names) / len(names)}


CUT_LENGTHS = (128, 160, 256, 384, 512)


def cut_table() -> dict:
    """Per file: the share of distinct (prompt, reply) inputs whose reply, and whose prompt + reply, the MiniLM
    reward model would read cut at each max_length (`alignloop.reward.evaluate.reply_was_cut`)."""
    from alignloop.reward.data import group_by_prompt, read_preference_file
    from alignloop.reward.evaluate import reply_was_cut
    from alignloop.reward.model import build_reward_model

    reward = build_reward_model(minilm_path(), max_length=512)
    out = {}
    for path, lines in ((TRAIN, "1-1200"), SPLITS["online"], SPLITS["rejection_sampled"]):
        texts = [(g.prompt, r) for g in group_by_prompt(read_preference_file(path, lines)) for r in g.responses]
        row: dict = {"replies": len(texts)}
        whole = {}
        for prompt, reply in texts:
            whole[(prompt, reply)] = len(reward.tokenizer(prompt, reply)["input_ids"])
        for length in CUT_LENGTHS:
            reward.max_length = length
            cut = sum(reply_was_cut(reward, p, r, reward.encode(p, r)["input_ids"]) for p, r in texts)
            row[f"reply_cut_{length}"] = round(cut / len(texts), 4)
            row[f"input_cut_{length}"] = round(sum(n > length for n in whole.values()) / len(texts), 4)
        out[f"{path.name}:{lines or 'all'}"] = row
    return out


SUMMARY = (("tests_pooled", "accuracy"), ("tests_pooled", "chosen_shorter"), ("tests_pooled", "chosen_longer"),
           ("online", "spearman"), ("rejection_sampled", "spearman"), ("online", "accuracy"),
           ("rejection_sampled", "accuracy"), ("base_dev", "accuracy"), ("base_dev", "chosen_shorter"))


def summarise(files: list[Path]) -> str:
    """A markdown table of runs' JSON lines: per method, the mean over seeds (min-max) of `SUMMARY`'s figures."""
    runs: dict[str, list[dict]] = {}
    for file in files:
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("{"):
                record = json.loads(line)
                if "keep_response" not in record:  # a rescoring with another cut rule is not a training run
                    runs.setdefault(record["method"], []).append(record)
    head = "| method | seeds | " + " | ".join(f"{split} {figure}" for split, figure in SUMMARY) + " |"
    rows = [head, "|" + "---|" * (len(SUMMARY) + 2)]
    for method, records in runs.items():
        cells = []
        for split, figure in SUMMARY:
            values = [r[split][figure] for r in records]
            scale, unit = (100, "%") if figure != "spearman" else (1, "")
            mean = sum(values) / len(values) * scale
            cells.append(f"{mean:.1f}{unit} ({min(values) * scale:.1f}-{max(values) * scale:.1f})" if unit else
                         f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})")
        rows.append(f"| {method} | {','.join(str(r['seed']) for r in records)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def split_lines(lines: str | None, limit: int | None) -> str | None:
    """The lines of a split to score: all of `lines` (None: the whole file), or its first `limit`."""
    if limit is None:
        return lines
    first = int(lines.split("-")[0]) if lines else 1
    last = first + limit - 1
    return f"{first}-{min(last, int(lines.split('-')[1])) if lines else last}"


def evaluate(models: list[Path], keep_response: str | None = None, max_length: int | None = None,
             limit: int | None = None, splits: list[str] | None = None) -> dict:
    """Score `models` once on every split (`alignloop.reward.evaluate.preference_report`); several models
    are scored by the mean of their normalised rewards (`RewardEnsemble`, the reward RL optimises)."""
    from alignloop.reward.data import encode_groups, group_by_prompt, read_preference_file
    from alignloop.reward.ensemble import RewardEnsemble
    from alignloop.reward.evaluate import preference_report
    from alignloop.reward.model import load_reward_model

    loaded = [load_reward_model(model, device="cpu") for model in models]
    for reward in loaded:
        if keep_response is not None:
            reward.keep_response = keep_response
        if max_length is not None:
            reward.max_length = max_length
    reward = loaded[0] if len(loaded) == 1 else RewardEnsemble(loaded)
    if isinstance(reward, RewardEnsemble) and reward.reading_problem():
        raise SystemExit(f"--model: {reward.reading_problem()}")
    out = {}
    for name in splits or SPLITS:
        path, lines = SPLITS[name]
        started = time.monotonic()
        groups = group_by_prompt(read_preference_file(path, split_lines(lines, limit)))
        out[name] = split_figures(preference_report(reward, encode_groups(groups, reward.encode), batch_size=32))
        out[name]["score_s"] = round(time.monotonic() - started, 1)
        print(f"{name}: {json.dumps(out[name])}", file=sys.stderr, flush=True)
    if all(name in out for name in TESTS):
        out["tests_pooled"] = pooled(out)
    return out


def train(method: str, seed: int, run_root: Path, extra: list[str]) -> tuple[Path, dict]:
    from alignloop.config.base import load_config
    from alignloop.reward.config import RewardConfig
    from alignloop.reward.stage import run_reward
    from alignloop.runs import RunDir

    run = RunDir(run_root).ensure()
    overrides = [f"data.path={TRAIN}", "data.lines=1-1200", "data.val_fraction=0.1", *RECIPE,
                 f"model.path={minilm_path()}", f"train.seed={seed}", *METHODS[method], *extra]
    cfg = load_config(RewardConfig, None, overrides)
    started = time.monotonic()
    result = run_reward(run, cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    stage = run.root / "rounds" / "001" / "reward"
    for scratch in ("checkpoints", "best"):  # hundreds of MB a run, not needed once final/ is written
        shutil.rmtree(stage / scratch, ignore_errors=True)
    info = {"train_s": round(time.monotonic() - started, 1), "overrides": overrides[3:]}
    if result is not None:
        info.update(val_accuracy=result.val_accuracy, steps=result.steps, best_step=result.best_step)
    return stage / "final", info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", nargs="?", choices=sorted(METHODS), help="Which loss.length configuration to train.")
    parser.add_argument("--cut-table", action="store_true", help="Print the share of replies cut at several "
                                                                 "max_length values, and exit.")
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="FILE",
                        help="Print a table of earlier runs' JSON lines, and exit.")
    parser.add_argument("--seed", type=int, default=0, help="train.seed (head initialisation, batch order).")
    parser.add_argument("--runs", type=Path, help="Where the run directory goes (default: a temporary folder, "
                                                  "named on stderr and in the result's `model`).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (training and scoring).")
    parser.add_argument("--model", type=Path, nargs="+", metavar="DIR",
                        help="Score this trained model instead of training one; several: the mean of their "
                             "normalised rewards (e.g. one method's seeds).")
    parser.add_argument("--keep-response", choices=("start", "end", "both"),
                        help="With --model: the part of a too-long reply to read.")
    parser.add_argument("--max-length", type=int, help="With --model: read at this max_length.")
    parser.add_argument("--limit", type=int, help="Score only the first N pairs of each split (pilots).")
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), help="Score only these splits.")
    parser.add_argument("overrides", nargs="*", help="Extra reward-config overrides.")
    args = parser.parse_intermixed_args()
    if not all(path.exists() for path, _ in SPLITS.values()):
        print(json.dumps({"skipped": f"the HH helpful files are not all in {SHARED}"}))
        return
    if args.cut_table:
        print(json.dumps(cut_table()))
        return
    if args.summarise:
        print(summarise(args.summarise))
        return
    if args.method is None:
        parser.error("name a method (or --cut-table)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"method": args.method}
    if args.model:
        models = args.model
        out.update(model=[str(m) for m in models], keep_response=args.keep_response, max_length=args.max_length)
    else:
        out["seed"] = args.seed
        root = args.runs or Path(tempfile.mkdtemp(prefix="reward-length-"))
        threads = [f"train.threads={args.threads}"] if args.threads else []
        model, info = train(args.method, args.seed, root / f"{args.method}-{args.seed}", [*threads, *args.overrides])
        models = [model]
        out.update(info, model=[str(model)])
        print(f"trained model kept in {model} (score it again with --model)", file=sys.stderr, flush=True)
    if args.limit:
        out["limit"] = args.limit
    out.update(evaluate(models, args.keep_response, args.max_length, args.limit, args.splits))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
