"""`sample select.mode=...` in the stage: which reward model judges, the budget, and `rounds/NNN/selection.jsonl`.

selection.jsonl has one line per candidate pair, in candidate order:
`{"prompt_index", "pair": [i, j], "selected", "share"}`, where `share` is
"random" (the uniform share), the mode ("uncertain", "diverse") for the pairs
it chose, or null; the mode's picks carry their `rank` (1: chosen first), and
with mode=uncertain every line has `p_a` (the estimates' mean P(a preferred)),
`disagreement` (their standard deviation), `information` (BALD's mutual
information) and `estimates`; `select.score` says which of the last two chose. It is written before
the items are loaded, so a rerun after a crash loads the same pairs.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from alignloop import atomic
from alignloop.errors import DataError
from alignloop.provenance import DigestCache, StageInputs, content_id, digest_json
from alignloop.reward.ensemble import (
    disagreement,
    ensemble_members,
    load_ensemble,
    mutual_information,
    pair_probabilities,
)
from alignloop.runs import RunDir
from alignloop.sample.config import SampleConfig
from alignloop.sample.select import (
    candidate_pairs,
    farthest_first,
    highest,
    limit_candidates,
    random_share,
    text_features,
    uncertainty,
)
from alignloop.train.device import pick_device

SELECTION_FILE = "selection.jsonl"


@dataclass(frozen=True)
class Selection:
    """How this round's pairs are chosen: the mode asked for, the mode used, and the reward model that judges."""

    asked: str
    mode: str
    reward: Optional[Path] = None
    note: Optional[str] = None  # why `mode` is not `asked`


def round_reward_before(run: RunDir, number: int) -> Optional[Path]:
    """`rounds/NNN/reward` of the newest round before `number` that has a reward model, or None."""
    for earlier in reversed([n for n in run.round_numbers() if n < number]):
        folder = run.round_dir(earlier) / "reward"
        if ensemble_members(folder):
            return folder
    return None


def plan_selection(run: RunDir, cfg: SampleConfig, number: int) -> Selection:
    """The selection of round `number`; mode=uncertain with no reward model to ask falls back to random."""
    asked = cfg.select.mode
    if asked != "uncertain":
        return Selection(asked, asked)
    if cfg.select.reward:
        reward = Path(cfg.select.reward)
        if not ensemble_members(reward):
            raise DataError(f"select.reward={reward}: no reward model there (a checkpoint, or a rounds/NNN/reward "
                            f"folder with final/ in it)")
        return Selection(asked, asked, reward)
    reward = round_reward_before(run, number)
    if reward is None:
        return Selection(asked, "random", note=f"no reward model before round {number}")
    return Selection(asked, asked, reward)


def add_selection_inputs(inputs: StageInputs, selection: Selection, cache: DigestCache) -> None:
    """The judging reward model is an input of the stage: its members' content, not its path."""
    if selection.reward is not None:
        members = ensemble_members(selection.reward)
        inputs.add_value("select_reward", digest_json([content_id(p, cache) for p in members]),
                         str(selection.reward))


def selection_budget(cfg: SampleConfig, response_counts: list[int]) -> int:
    """Pair items to make: `select.budget`, else what the store would make (pairs_per_prompt per prompt)."""
    if cfg.select.budget is not None:
        return cfg.select.budget
    per_prompt = cfg.pairs_per_prompt
    return sum(count * (count - 1) // 2 if per_prompt is None else min(per_prompt, count * (count - 1) // 2)
               for count in response_counts)


def _text(response) -> str:
    return response["text"] if isinstance(response, dict) else response


def _uncertain_rows(records: list[dict], candidates: list[tuple[int, int, int]], selection: Selection,
                    cfg: SampleConfig, log: Callable[[str], None]) -> tuple[torch.Tensor, list[dict]]:
    """(score per candidate, its figures for selection.jsonl): every response scored once by every estimate."""
    ensemble = load_ensemble(selection.reward, device=pick_device(cfg.device))
    offsets, prompts, texts = [], [], []
    for record in records:
        offsets.append(len(texts))
        prompts += [record["prompt"]] * len(record["responses"])
        texts += [_text(r) for r in record["responses"]]
    log(f"sample: scoring {len(texts):,} responses with {ensemble.size} reward estimates from {selection.reward}")
    rewards = ensemble.score_texts(prompts, texts, cfg.select.batch_size)
    a = torch.tensor([offsets[r] + i for r, i, _ in candidates], dtype=torch.long)
    b = torch.tensor([offsets[r] + j for r, _, j in candidates], dtype=torch.long)
    probabilities = pair_probabilities(rewards[a], rewards[b])
    scores, _ = uncertainty(probabilities, cfg.select.score)
    if ensemble.size < 2:
        log(f"sample: the reward model in {selection.reward} has one estimate, so no disagreement: choosing the "
            f"pairs whose P(a preferred) is nearest 0.5 (train it with ensemble.heads=2 or more for disagreement)")
    figures = [{"p_a": round(float(p), 6), "disagreement": round(float(s), 6), "information": round(float(i), 6),
                "estimates": ensemble.size}
               for p, s, i in zip(probabilities.mean(dim=1), disagreement(probabilities),
                                  mutual_information(probabilities))]
    return scores, figures


def choose_pairs(records: list[dict], cfg: SampleConfig, selection: Selection,
                 log: Callable[[str], None]) -> list[dict]:
    """One row per candidate pair (see the module docstring); the same rows for the same records and seed."""
    every = candidate_pairs([len(r["responses"]) for r in records])
    budget = selection_budget(cfg, [len(r["responses"]) for r in records])
    rng = random.Random(cfg.seed)
    limit = math.ceil(cfg.select.candidates * budget) if cfg.select.candidates else None
    candidates = [every[i] for i in limit_candidates(len(every), limit, rng)]
    fraction = 1.0 if selection.mode == "random" else cfg.select.random_fraction
    drawn = random_share(len(candidates), budget, fraction, rng)
    wanted = min(budget, len(candidates)) - len(drawn)
    figures: list[dict] = [{} for _ in candidates]
    if selection.mode == "uncertain":
        scores, figures = _uncertain_rows(records, candidates, selection, cfg, log)
        picked = highest(scores, wanted, drawn)
    elif selection.mode == "diverse":
        directions = torch.stack([text_features(_text(records[r]["responses"][i]))
                                  - text_features(_text(records[r]["responses"][j])) for r, i, j in candidates])
        picked = farthest_first(directions, wanted, drawn)
    else:
        picked = []
    share = {index: "random" for index in drawn}
    rank = {index: n + 1 for n, index in enumerate(picked)}
    share.update({index: selection.mode for index in picked})
    rows = []
    for index, (record, i, j) in enumerate(candidates):
        row = {"prompt_index": record, "pair": [i, j], "selected": index in share, "share": share.get(index)}
        if index in rank:
            row["rank"] = rank[index]
        rows.append({**row, **figures[index]})
    log(selection_line(selection, rows, len(every), cfg.select.score))
    return rows


def selection_line(selection: Selection, rows: list[dict], pool: int, score: str = "information") -> str:
    """One log line: what was chosen, from how many, and (uncertain) how much more disputed it is than the rest,
    by `score` (information or spread)."""
    chosen = [r for r in rows if r["selected"]]
    drawn = sum(r["share"] == "random" for r in chosen)
    how = {"uncertain": "most disputed by the reward model", "diverse": "most different comparisons",
           "random": "at random"}[selection.mode]
    line = (f"sample: select={selection.asked}: {len(chosen):,} of {len(rows):,} candidate pairs "
            f"(of {pool:,}): {drawn:,} drawn at random, {len(chosen) - drawn:,} {how}")
    if selection.mode == "uncertain" and rows:
        key = "information" if score == "information" else "disagreement"
        average = sum(r[key] for r in chosen) / max(len(chosen), 1)
        line += (f"; mean {key} {average:.4f} chosen, {sum(r[key] for r in rows) / len(rows):.4f} all candidates")
    return line


def write_selection(path: Path, rows: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_selection(path: Path, records: list[dict]) -> list[dict]:
    """The rows written before an interruption; a one-line error if they do not fit the samples."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    for row in rows:
        r, (i, j) = row["prompt_index"], row["pair"]
        if not (0 <= r < len(records) and 0 <= i < j < len(records[r]["responses"])):
            raise DataError(f"{path} names pair {row['pair']} of prompt {r}, which {path.parent}/samples.jsonl "
                            f"does not hold; delete {path} to choose again")
    return rows


def selected_records(records: list[dict], rows: list[dict]) -> list[dict]:
    """The records that have chosen pairs, each with its `pairs` for the store (prompts with none are left out)."""
    pairs: dict[int, list[list[int]]] = {}
    for row in rows:
        if row["selected"]:
            pairs.setdefault(row["prompt_index"], []).append(row["pair"])
    return [{**record, "pairs": pairs[index]} for index, record in enumerate(records) if index in pairs]


def selection_summary(selection: Selection, rows: list[dict]) -> dict:
    """What the manifest records about the selection."""
    chosen = [r for r in rows if r["selected"]]
    summary = {"mode": selection.mode, "asked": selection.asked, "candidates": len(rows), "pairs": len(chosen),
               "random": sum(r["share"] == "random" for r in chosen)}
    if selection.reward is not None:
        summary.update(reward=str(selection.reward), estimates=rows[0].get("estimates") if rows else None)
    if selection.note:
        summary["note"] = selection.note
    return summary
