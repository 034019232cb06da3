"""Label efficiency of `sample --select uncertain` against random pairs, on the built-in story task.

    .venv/bin/python bench/label_efficiency.py --sft runs/demo/sft/final [--work runs/bench-select]
        [--prompts 600] [--k 4] [--sizes 500,1000,2000] [--batch 250] [--seeds 0,1,2] [--heads 4] [--threads 1]
        [--margin 0] [--random-fraction 0.25]

The simulated annotators are the people and the gold judge is the truth. Once, from the SFT model
(a demo-size one: `alignloop demo` leaves runs/demo/sft/final):
1. the candidate pool: `--k` responses to each of `--prompts` built-in story openings (64 new tokens),
   every pair of each prompt a candidate (600 x 6 = 3,600 pairs), as `sample --select` sees them;
2. a fixed held-out set: 3 responses to each of the 200 held-out openings, its 600 pairs labelled
   by the gold judge (gold ties left out);
3. the reward features: every response read once by the SFT model (prompt + response), its last
   layer's mean over the response tokens and its last token's state, standardised.

Then for each seed and arm, judgments are bought in batches of `--batch` from one simulated
annotator per pair (one of 4 personas, noisy Bradley-Terry; ties and "both bad" are judgments
spent that teach nothing), and after each batch a reward ensemble is trained on what is labelled:
`--heads` linear Bradley-Terry heads on the frozen features, each on its own 80% bootstrap share (as
`reward ensemble.heads` trains heads on one backbone, with the backbone frozen so that the 3 x 2
arms x several retrainings fit a shared CPU). random: the next batch is drawn uniformly from the
unlabelled candidates. uncertain: the first batch is random (nothing to ask yet), then each batch is
a quarter (`--random-fraction`) at random and the rest the unlabelled pairs the heads disagree on most, chosen by the
same functions as `sample --select uncertain` (`alignloop.sample.select`) with its default
`select.score=information` (BALD). spread: the same with `select.score=spread` (the standard
deviation of the heads' P(a preferred)). design (with `--arms`): the same random quarter, the rest chosen
greedily for the linear heads as a batch (D-optimal design, `design_pick`), not in the product.
With `--margin M` the heads train as `reward loss.margin=M` trains a reward model: the
persona's strength (1 slightly, 2 clearly, 3 much better) asks for a reward gap of 0, M/2 or M.

The figure is the ensemble's (mean reward's) agreement with the gold judge on the held-out pairs at
each number of judgments: the mean over seeds, the seeds' range, and a 95% paired bootstrap interval
over held-out prompts (each prompt's correctness averaged over seeds). The last line printed is one
JSON object; `--out` keeps every row (default bench/results/label_efficiency.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from alignloop.evaluation.statistics import mean_interval, per_unit, share_interval  # noqa: E402
from alignloop.feedback.simulate import item_rng  # noqa: E402
from alignloop.judges.gold import gold_preference  # noqa: E402
from alignloop.judges.personas import default_personas  # noqa: E402
from alignloop.reward.ensemble import pair_probabilities  # noqa: E402
from alignloop.reward.data import strength_margin  # noqa: E402
from alignloop.reward.losses import bradley_terry_loss  # noqa: E402
from alignloop.sample.select import candidate_pairs, highest, random_share, uncertainty  # noqa: E402

NEW_TOKENS = 64
HELDOUT_K = 3
BOOTSTRAP = 0.8  # reward ensemble.bootstrap's default
WEIGHT_DECAY = 1e-2
STEPS = 300


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sampled(sft: Path, prompts: list[str], k: int, seed: int, path: Path) -> list[dict]:
    """K responses to each prompt from the SFT model, cached in `path` (JSONL, as samples.jsonl)."""
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines()]
    from alignloop.config.base import load_config
    from alignloop.sample.config import SampleConfig
    from alignloop.sample.stage import sample_responses

    cfg = load_config(SampleConfig, None, [f"k={k}", f"seed={seed}", f"sampling.max_new_tokens={NEW_TOKENS}",
                                           "device=cpu"])
    torch.manual_seed(seed)
    records = sample_responses(sft, prompts, cfg, log)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


@torch.no_grad()
def features(sft: Path, records: list[dict], path: Path) -> torch.Tensor:
    """[responses, 2 x hidden]: the SFT model's last layer, mean over the response tokens and at the last token."""
    if path.exists():
        return torch.load(path)
    from alignloop.models.causal_lm import load_causal_lm
    from alignloop.tokenizer import load_tokenizer

    model = load_causal_lm(sft).eval()
    tokenizer = load_tokenizer(sft)
    rows = [(r["prompt"], text) for r in records for text in r["responses"]]
    out = []
    for start in range(0, len(rows), 32):
        batch = rows[start:start + 32]
        ids = [tokenizer(p + t)["input_ids"][:256] for p, t in batch]
        starts = [min(len(tokenizer(p)["input_ids"]), len(i) - 1) for (p, _), i in zip(batch, ids)]
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        hidden = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        for row, (n, s) in enumerate(zip([len(i) for i in ids], starts)):
            out.append(torch.cat([hidden[row, s:n].mean(dim=0), hidden[row, n - 1]]))
        if start % 640 == 0:
            log(f"features: {min(start + 32, len(rows)):,}/{len(rows):,} responses")
    stacked = torch.stack(out)
    torch.save(stacked, path)
    return stacked


def train_heads(x: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, heads: int, seed: int,
                margin: torch.Tensor | None = None) -> torch.Tensor:
    """[heads, dim] linear Bradley-Terry heads, each fit to its own bootstrap share of the labelled pairs.

    `margin`: [pairs] Llama 2 margins (from the annotators' strength), or None."""
    generator = torch.Generator().manual_seed(seed)
    weights = []
    for _ in range(heads):
        share = torch.randperm(len(chosen), generator=generator)[: max(1, round(BOOTSTRAP * len(chosen)))]
        diff_c, diff_r = x[chosen[share]], x[rejected[share]]
        m = None if margin is None else margin[share]
        w = torch.zeros(x.shape[1], requires_grad=True)
        optimizer = torch.optim.Adam([w], lr=0.05)
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss = bradley_terry_loss(diff_c @ w, diff_r @ w, m) + WEIGHT_DECAY * (w * w).sum()
            loss.backward()
            optimizer.step()
        weights.append(w.detach())
    return torch.stack(weights)


def judge(pool: list[dict], candidates: list[tuple[int, int, int]], seed: int) -> list[tuple[str, int]]:
    """One simulated annotator's (verdict, strength 1-3) on each candidate, a persona per pair.

    Verdicts are "a", "b", "tie" or "both_bad"."""
    personas = default_personas(4, seed=0)
    pick = random.Random(f"label-efficiency:{seed}")
    verdicts = []
    for index, (r, i, j) in enumerate(candidates):
        persona = pick.randrange(len(personas))
        record = pool[r]
        verdict = personas[persona].judge_pair(record["prompt"], record["responses"][i], record["responses"][j],
                                               item_rng(seed, persona, index))
        verdicts.append((verdict.choice, verdict.strength))
    return verdicts


def design_pick(directions: torch.Tensor, fisher: torch.Tensor, known: list[int], k: int,
                taken: list[int], ridge: float) -> list[int]:
    """`k` rows of `directions` [N, D] chosen greedily for a linear Bradley-Terry model (D-optimal design):
    each the row whose judgment adds most information given the rows `known` and `taken` (and those chosen
    before it), fisher_i * d_i' A^-1 d_i, with A = ridge * I + sum over those rows of fisher_j d_j d_j'.
    Batch-aware where top-k disagreement is not: a pick makes the rows that point its way worth less."""
    dim = directions.shape[1]
    a = ridge * torch.eye(dim, dtype=torch.float64) + (directions[known].double().T * fisher[known].double()) \
        @ directions[known].double()
    d = directions.double()
    inverse = torch.linalg.inv(a)
    gain = fisher.double() * ((d @ inverse) * d).sum(dim=1)
    available = torch.ones(len(d), dtype=torch.bool)
    available[known] = False
    chosen: list[int] = []

    def add(index: int) -> None:
        nonlocal inverse, gain
        available[index] = False
        v = inverse @ d[index]
        denominator = 1.0 + fisher[index].double() * (d[index] @ v)
        inverse = inverse - fisher[index].double() * torch.outer(v, v) / denominator
        gain = gain - fisher.double() * fisher[index].double() * (d @ v) ** 2 / denominator

    for index in taken:
        add(index)
    for _ in range(min(k, int(available.sum()))):
        pick = int(torch.argmax(torch.where(available, gain, torch.tensor(-1.0, dtype=torch.float64))))
        chosen.append(pick)
        add(pick)
    return chosen


def run_arm(arm: str, seed: int, x: torch.Tensor, offsets: list[int], candidates, verdicts, heldout, sizes,
            batch: int, heads: int, margin: float = 0.0, random_fraction: float = 0.25) -> list[dict]:
    """Buy judgments batch by batch; at each of `sizes`, the ensemble's held-out agreement with gold.

    `arm`: random, uncertain (select.score=information) or spread (select.score=spread); `margin`:
    `reward loss.margin`, the margin a strength-3 judgment asks for (0: strength unused); `random_fraction`:
    `select.random_fraction`, the share of each active batch drawn at random."""
    rng = random.Random(f"arm:{seed}")
    a = torch.tensor([offsets[r] + i for r, i, _ in candidates])
    b = torch.tensor([offsets[r] + j for r, _, j in candidates])
    labelled: list[int] = []
    unlabelled = list(range(len(candidates)))
    rows = []
    weights = None
    directions = x[a] - x[b]  # what a judgment of each candidate teaches the linear heads (design arm)
    while len(labelled) < max(sizes):
        want = min(batch, max(sizes) - len(labelled))
        if arm == "random" or weights is None:
            take = [unlabelled[i] for i in random_share(len(unlabelled), want, 1.0, rng)]
        elif arm == "design":
            p = torch.sigmoid(directions @ weights.mean(dim=0))
            usable = [c for c in labelled if verdicts[c][0] in ("a", "b")]
            drawn = random_share(len(unlabelled), want, random_fraction, rng)
            order = torch.tensor(unlabelled + usable)
            picks = design_pick(directions[order], (p * (1 - p))[order], list(range(len(unlabelled), len(order))),
                                want - len(drawn), drawn, 2 * WEIGHT_DECAY * max(1, len(usable)))
            take = [unlabelled[i] for i in drawn + picks]
        else:
            probabilities = pair_probabilities(x[a[unlabelled]] @ weights.T, x[b[unlabelled]] @ weights.T)
            scores, _ = uncertainty(probabilities, "spread" if arm == "spread" else "information")
            drawn = random_share(len(unlabelled), want, random_fraction, rng)
            take = [unlabelled[i] for i in drawn + highest(scores, want - len(drawn), drawn)]
        labelled += take
        taken = set(take)
        unlabelled = [c for c in unlabelled if c not in taken]
        if arm == "random" and len(labelled) not in sizes:
            continue  # random never asks the model: train only where the figure is taken
        usable = [c for c in labelled if verdicts[c][0] in ("a", "b")]
        chosen = torch.tensor([a[c] if verdicts[c][0] == "a" else b[c] for c in usable])
        rejected = torch.tensor([b[c] if verdicts[c][0] == "a" else a[c] for c in usable])
        margins = strength_margin(torch.tensor([float(verdicts[c][1]) for c in usable]), margin) if margin else None
        weights = train_heads(x, chosen, rejected, heads, seed * 1000 + len(labelled), margins)
        if len(labelled) in sizes:
            mean = weights.mean(dim=0)
            right = [float(((x[h["a"]] - x[h["b"]]) @ mean > 0) == (h["gold"] == 1.0)) for h in heldout]
            rows.append({"arm": arm, "seed": seed, "judgments": len(labelled), "usable": len(usable),
                         "agreement": sum(right) / len(right), "right": right})
            log(f"{arm} seed {seed}: {len(labelled):,} judgments ({len(usable):,} usable): "
                f"gold agreement {rows[-1]['agreement']:.4f}")
    return rows


def summarise(rows: list[dict], heldout: list[dict]) -> dict:
    """Per arm and size: mean over seeds, the seeds' range, a paired bootstrap interval over held-out prompts."""
    units = [h["prompt"] for h in heldout]
    table = {}
    for arm in sorted({r["arm"] for r in rows}):
        for size in sorted({r["judgments"] for r in rows if r["arm"] == arm}):
            runs = [r for r in rows if r["arm"] == arm and r["judgments"] == size]
            per_pair = [sum(r["right"][i] for r in runs) / len(runs) for i in range(len(heldout))]
            low, high = share_interval(per_pair, units)
            table[f"{arm}@{size}"] = {"mean": sum(r["agreement"] for r in runs) / len(runs),
                                      "seeds": [round(r["agreement"], 4) for r in runs],
                                      "interval": [round(low, 4), round(high, 4)], "per_pair": per_pair,
                                      "usable": [r["usable"] for r in runs]}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", type=Path, required=True, help="SFT checkpoint trained on the built-in stories "
                                                                "(seed 0), e.g. runs/demo/sft/final.")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-select",
                        help="Where the pool, held-out pairs and features are cached (reused when present).")
    parser.add_argument("--prompts", type=int, default=600)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--sizes", default="500,1000,2000")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arms", default="random,uncertain,spread",
                        help="Comma-separated: random, uncertain (select.score=information), spread, design "
                             "(greedy D-optimal design for the linear heads, batch-aware).")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="Train with `reward loss.margin` M: a strength-3 judgment asks for margin M, strength 2 "
                             "for M/2 (0: the annotators' strength unused).")
    parser.add_argument("--random-fraction", type=float, default=0.25,
                        help="select.random_fraction: the share of each active batch drawn at random (default 0.25, "
                             "the option's default).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "label_efficiency.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    args.work.mkdir(parents=True, exist_ok=True)

    from alignloop.data.stories import write_builtin_data
    from alignloop.stages import read_prompts

    data = args.work / "data" / "stories.txt"
    data.parent.mkdir(parents=True, exist_ok=True)
    paths = write_builtin_data(data, 20000, 0) if not (data.parent / "stories.eval_prompts.jsonl").exists() else {
        "prompts": data.parent / "stories.prompts.jsonl", "eval_prompts": data.parent / "stories.eval_prompts.jsonl"}
    pool = sampled(args.sft, read_prompts(paths["prompts"], limit=args.prompts), args.k, 0, args.work / "pool.jsonl")
    held = sampled(args.sft, read_prompts(paths["eval_prompts"]), HELDOUT_K, 1, args.work / "heldout.jsonl")
    x = features(args.sft, pool + held, args.work / "features.pt")
    x = (x - x.mean(dim=0)) / x.std(dim=0).clamp_min(1e-6)
    offsets, total = [], 0
    for record in pool + held:
        offsets.append(total)
        total += len(record["responses"])
    candidates = candidate_pairs([len(r["responses"]) for r in pool])
    if max(sizes) > len(candidates):
        sys.exit(f"{max(sizes)} judgments need at least as many candidate pairs; the pool has {len(candidates)}")
    heldout = []
    for index, (r, i, j) in enumerate(candidate_pairs([len(r["responses"]) for r in held])):
        record = held[r]
        gold = gold_preference(record["prompt"], record["responses"][i], record["responses"][j])
        if gold != 0.5:
            heldout.append({"prompt": record["prompt"], "a": offsets[len(pool) + r] + i,
                            "b": offsets[len(pool) + r] + j, "gold": gold})
    log(f"pool: {len(candidates):,} candidate pairs from {len(pool):,} prompts; held-out: {len(heldout):,} "
        f"gold-labelled pairs; setup {time.monotonic() - started:.0f}s")

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        verdicts = judge(pool, candidates, seed)
        for arm in args.arms.split(","):
            rows += run_arm(arm, seed, x, offsets, candidates, verdicts, heldout, sizes, args.batch, args.heads,
                            args.margin, args.random_fraction)
    table = summarise(rows, heldout)
    target = table[f"random@{max(sizes)}"]
    active = [arm for arm in args.arms.split(",") if arm != "random"]
    reached = {arm: next((s for s in sizes if table[f"{arm}@{s}"]["mean"] >= target["mean"]), None)
               for arm in active}
    gaps = {}
    for arm in active:
        for size in sizes:
            diff = [u - r for u, r in zip(table[f"{arm}@{size}"]["per_pair"], target["per_pair"])]
            sums, counts = per_unit(diff, [h["prompt"] for h in heldout])
            low, high = mean_interval([s / c for s, c in zip(sums, counts)])
            gaps[f"{arm}@{size} - random@{max(sizes)}"] = {
                "mean": sum(diff) / len(diff), "interval": [round(low, 4), round(high, 4)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "right"}) + "\n" for r in rows))
    print(json.dumps({
        "agreement": {k: {kk: vv for kk, vv in v.items() if kk != "per_pair"} for k, v in table.items()},
        "minus_random_at_max": gaps,
        "reaches_random_max_at": reached,
        "margin": args.margin, "random_fraction": args.random_fraction, "batch": args.batch,
        "pool_pairs": len(candidates), "heldout_pairs": len(heldout),
        "wall_s": round(time.monotonic() - started),
    }))


if __name__ == "__main__":
    main()
