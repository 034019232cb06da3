"""Preference data for the reward model: reading it, grouping it by prompt, and batching it.

Sources:
- a JSONL file (optionally gzip), one record a line, format told per line:
  TRL `{"prompt", "chosen", "rejected"}` (plain strings or conversational
  message lists, or an implicit prompt), Anthropic HH `{"chosen", "rejected"}`
  transcripts, or our rich records (`{"prompt", "responses", "kind", "choice" |
  "ranking" | "ratings", "annotator", ...}` as `alignloop feedback export
  --format rich` writes them); TRL and HH lines are read by the same code as
  `alignloop feedback import` (`alignloop.feedback.formats`);
- the run's feedback store.

A malformed line (not UTF-8, not JSON, a missing field, a field of the wrong
type, a rich record whose ranking or ratings name no response of its own) is an
error naming the file and line. Well-formed records that cannot be learned from
(an empty response, chosen identical to rejected, a tie when ties are dropped)
are skipped and counted by reason, with their line numbers; only a source with
nothing usable is an error.

Everything becomes `PromptGroup`s: one prompt, its distinct responses, and the
comparisons between them (pairs, ties, rankings, ratings). A batch encodes
every response of its groups once, however many comparisons it enters: a
ranking of K responses gives C(K,2) pairs for K forward passes (InstructGPT,
Ouyang et al. 2022, section 3.5). With a decoder the prompt itself is read once
per group too: its responses share one row behind a 4D attention mask
(`alignloop.reward.model.pack_groups`).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from alignloop.data.jsonl import decode_utf8, parse_json, read_bytes
from alignloop.data.split import split_indices
from alignloop.errors import DataError
from alignloop.feedback import formats
from alignloop.feedback.models import CHOICES, ITEM_KINDS
from alignloop.provenance import digest_json
from alignloop.reward.model import pad_batch

RATING_LOW, RATING_HIGH = 1.0, 5.0


# ---- plain preference records ---------------------------------------------------------------

@dataclass
class Comparison:
    """`chosen` preferred to `rejected` (or as good, when `tie`), with the annotator's strength 1-3."""

    prompt: str
    chosen: str
    rejected: str
    strength: Optional[float] = None
    tie: bool = False


@dataclass
class Ranking:
    """Responses to one prompt, best first."""

    prompt: str
    responses: list[str]


@dataclass
class Rating:
    """A Likert rating of one response, mapped onto [0, 1]."""

    prompt: str
    response: str
    score: float


@dataclass
class Preferences:
    """Everything read from one source, with the count of records skipped and why."""

    comparisons: list[Comparison] = field(default_factory=list)
    rankings: list[Ranking] = field(default_factory=list)
    ratings: list[Rating] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)  # reason -> line numbers, when known
    source: str = ""
    # From a feedback store: the judgments read (by content), the newest one's id, and how many newer
    # ones were left out because the stage had already been started on the older ones.
    fingerprint: str = ""
    judgments: int = 0
    max_judgment_id: Optional[int] = None
    newer: int = 0

    def __len__(self) -> int:
        return len(self.comparisons) + len(self.rankings) + len(self.ratings)

    def skip(self, reason: str, line: Optional[int] = None) -> None:
        """Count a record left out (and its line, when it came from a file)."""
        self.skipped[reason] += 1
        if line is not None:
            self.skipped_lines.setdefault(reason, []).append(line)

    def skipped_summary(self) -> str:
        if not self.skipped:
            return ""
        total = sum(self.skipped.values())
        reasons = ", ".join(
            f"{n} {reason}" + (f" ({formats.line_list(self.skipped_lines[reason])})"
                               if reason in self.skipped_lines else "")
            for reason, n in self.skipped.most_common())
        return f"skipped {total} record{'s' if total != 1 else ''} of {self.source}: {reasons}"


class SkipRecord(Exception):
    """A well-formed record that cannot be used; its message is the reason it is counted under."""


def _nonempty(value: str, name: str) -> str:
    if not value.strip():
        raise SkipRecord(f"empty {name}")
    return value


def _number(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def _strength(value: Any, where: str) -> Optional[float]:
    """An annotator's strength 1-3, or None; anything else is an error."""
    if value is not None and not _number(value, 1, 3):
        raise DataError(f"{where}: 'strength' must be a number from 1 to 3 (or null), not {json.dumps(value)[:40]}")
    return value


def _check_pair(prompt: str, chosen: str, rejected: str, strength: Any = None, tie: Any = False) -> Comparison:
    _nonempty(chosen, "chosen")
    _nonempty(rejected, "rejected")
    if formats.identical(chosen, rejected):
        raise SkipRecord(formats.IDENTICAL)
    return Comparison(prompt, chosen, rejected, strength, bool(tie))


def pair_record(obj: dict, where: str = "record") -> Comparison:
    """A TRL or HH line as a comparison (read as `alignloop feedback import` reads it).

    A malformed line is a `DataError` naming `where`; `SkipRecord` says why a
    well-formed one cannot be used (an empty response, chosen the same as rejected).
    """
    record = formats.preference_record(obj, where)
    tie = obj.get("tie", False)
    if tie is not None and not isinstance(tie, bool):
        raise DataError(f"{where}: 'tie' must be true or false, not {json.dumps(tie)[:40]}")
    return _check_pair(record["prompt"], record["chosen"], record["rejected"],
                       _strength(obj.get("strength"), where), tie)


def _response_id(value: Any, ids: list[int], where: str) -> int:
    """A response id in a ranking or in the ratings' keys (an int, or its digits as a string)."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value not in ids:
        raise DataError(f"{where}: {json.dumps(value)[:40]} is not the id of one of the record's responses "
                        f"({', '.join(map(str, ids))})")
    return value


def _rich_ratings(ratings: Any, ids: list[int], where: str) -> dict[int, dict[str, float]]:
    if ratings is None:
        return {}
    if not isinstance(ratings, dict):
        raise DataError(f"{where}: 'ratings' must be an object {{response id: {{aspect: 1-5}}}}")
    out = {}
    for key, scores in ratings.items():
        if not isinstance(scores, dict) or not all(_number(v, RATING_LOW, RATING_HIGH) for v in scores.values()):
            raise DataError(f"{where}: the ratings of response {key} must be an object {{aspect: score from "
                            f"{RATING_LOW:g} to {RATING_HIGH:g}}}")
        out[_response_id(key, ids, where)] = scores
    return out


def rich_row(obj: dict, line: int, where: Optional[str] = None) -> dict:
    """A rich record as a judgment row of `alignloop.feedback.preferences` (ids by position if absent).

    Every field the reward model reads is checked: a malformed record is a `DataError`
    naming `where`; `SkipRecord` for a well-formed pair or ranking it cannot learn from.
    """
    where = where or f"line {line}"
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        raise DataError(f"{where}: a rich record needs a 'prompt' string")
    responses = obj.get("responses")
    if not isinstance(responses, list) or not responses:
        raise DataError(f"{where}: 'responses' must be a non-empty list of strings or {{\"text\", \"id\"}} objects")
    clean = []
    for position, response in enumerate(responses):
        if isinstance(response, str):
            response = {"text": response}
        if not isinstance(response, dict) or not isinstance(response.get("text"), str):
            raise DataError(f"{where}: response {position + 1} must be a string or an object with a 'text' string")
        clean.append({**response, "id": response.get("id", position)})
    ids = [r["id"] for r in clean]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids):
        raise DataError(f"{where}: response ids must be distinct whole numbers")
    kind = obj.get("kind") or ("ranking" if obj.get("ranking") else "pair" if obj.get("choice") else "rating")
    if kind not in ITEM_KINDS:
        raise DataError(f"{where}: 'kind' must be one of {', '.join(ITEM_KINDS)}, not {json.dumps(kind)[:40]}")
    choice, ranking = obj.get("choice"), obj.get("ranking")
    if kind == "pair" and len(clean) != 2:
        raise DataError(f"{where}: a pair has 2 responses, not {len(clean)}")
    if choice is not None and (kind != "pair" or choice not in CHOICES):
        raise DataError(f"{where}: 'choice' is for pairs and must be one of {', '.join(CHOICES)}, "
                        f"not {json.dumps(choice)[:40]}")
    if ranking is not None:
        if kind != "ranking" or not isinstance(ranking, list) or len(ranking) < 2:
            raise DataError(f"{where}: 'ranking' is for rankings: a list of response ids, best first")
        ranking = [_response_id(i, ids, where) for i in ranking]
        if len(set(ranking)) != len(ranking):
            raise DataError(f"{where}: 'ranking' names a response twice")
    for key, types in (("annotator", str), ("round", int), ("item_id", (int, str))):
        if obj.get(key) is not None and (not isinstance(obj[key], types) or isinstance(obj[key], bool)):
            raise DataError(f"{where}: '{key}' has the wrong type ({json.dumps(obj[key])[:40]})")
    row = {"kind": kind, "prompt": prompt, "responses": clean, "choice": choice,
           "strength": _strength(obj.get("strength"), where), "ranking": ranking,
           "ratings": _rich_ratings(obj.get("ratings"), ids, where),
           "annotator": obj.get("annotator") or "unknown", "round": obj.get("round"),
           "item_id": obj.get("item_id", f"line-{line}")}
    if kind in ("pair", "ranking") and any(not r["text"].strip() for r in clean):
        raise SkipRecord("empty response")
    if kind == "pair" and formats.identical(clean[0]["text"], clean[1]["text"]):
        raise SkipRecord(formats.IDENTICAL)
    return row


def parse_lines(spec: Optional[str]) -> Optional[tuple[int, int]]:
    """'1-1200' -> (1, 1200); '5' -> (5, 5); None -> None."""
    if spec is None:
        return None
    try:
        first, _, last = str(spec).partition("-")
        bounds = (int(first), int(last) if last else int(first))
    except ValueError:
        raise DataError(f"data.lines must look like 1-1200, not {spec!r}") from None
    if bounds[0] < 1 or bounds[1] < bounds[0]:
        raise DataError(f"data.lines {spec!r} is not a range of 1-based line numbers")
    return bounds


def read_preference_file(path: Path | str, lines: Optional[str] = None, aggregate: str = "majority",
                         ties: str = "drop", ratings: bool = False) -> Preferences:
    """Every usable record of a preference JSONL file (gzip or not), within `lines` when given.

    A malformed line (not UTF-8, not JSON, not a record of a known format, a field
    of the wrong type) is a `DataError` naming it; usable-looking records that
    cannot be learned from are counted in `.skipped`, with their lines.
    """
    from alignloop.feedback import preferences as store_preferences

    path = Path(path)
    bounds = parse_lines(lines)
    out = Preferences(source=str(path))
    rich_rows: list[dict] = []
    for number, raw_line in enumerate(read_bytes(path, "preference file").split(b"\n"), start=1):
        if bounds and not bounds[0] <= number <= bounds[1]:
            continue
        if not raw_line.strip():
            continue
        where = f"{path} line {number}"
        obj = parse_json(decode_utf8(raw_line, path, number), where)
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        try:
            if "responses" in obj:
                rich_rows.append(rich_row(obj, number, where))
            else:
                comparison = pair_record(obj, where)
                if comparison.tie and ties == "drop":
                    raise SkipRecord("tie (data.ties=drop)")
                out.comparisons.append(comparison)
        except SkipRecord as reason:
            out.skip(str(reason), number)
    if rich_rows:
        _add_rows(out, rich_rows, aggregate, ties, ratings, store_preferences)
    if not len(out):
        why = f" ({out.skipped_summary()})" if out.skipped else ""
        raise DataError(f"{path} holds no usable preference records{why}")
    return out


def _add_rows(out: Preferences, rows: list[dict], aggregate: str, ties: str, ratings: bool, prefs) -> None:
    """Judgment rows (store or rich file) to comparisons, rankings and ratings."""
    pair_rows = [r for r in rows if r["kind"] == "pair"]
    ranking_rows = [r for r in rows if r["kind"] == "ranking"]
    # Majority applies to rankings through their pairs; "every label" keeps each ranking whole.
    if aggregate == "majority":
        pair_rows = pair_rows + ranking_rows
    else:
        for record in prefs.ranking_records(ranking_rows):
            if any(not text.strip() for text in record["responses"]) or len(set(record["responses"])) < 2:
                out.skip("ranking with empty or identical responses")
                continue
            out.rankings.append(Ranking(record["prompt"], list(record["responses"])))
    for record in prefs.preference_records(pair_rows, aggregate, ties):
        try:
            out.comparisons.append(_check_pair(record["prompt"], record["chosen"], record["rejected"],
                                               record.get("strength"), record.get("tie")))
        except SkipRecord as reason:
            out.skip(str(reason))
    if ratings:
        for record in prefs.rating_records(rows):
            scores = [float(v) for v in record["ratings"].values() if isinstance(v, (int, float))]
            if scores and record["response"].strip():
                mean = sum(scores) / len(scores)
                out.ratings.append(Rating(record["prompt"], record["response"],
                                          (mean - RATING_LOW) / (RATING_HIGH - RATING_LOW)))


def judgments_fingerprint(rows: list[dict]) -> str:
    """A content hash of judgment rows: what was judged and how, not when or how fast."""
    fields = ("judgment_id", "item_id", "round", "kind", "prompt", "annotator", "choice", "strength", "ranking",
              "ratings", "gold")
    canonical = [[row.get(k) for k in fields] + [[r["text"] for r in row.get("responses", [])]] for row in rows]
    return digest_json(canonical)


def read_store(db: str, rounds: Any = "all", aggregate: str = "majority", ties: str = "drop",
               ratings: bool = False, upto_round: Optional[int] = None,
               max_judgment_id: Optional[int] = None) -> Preferences:
    """The judgments of a feedback store (all rounds, or the listed round numbers).

    `upto_round`: with rounds='all', leave out rounds after this one (a round's reward model never sees
    later rounds' feedback; imported judgments, which belong to no round, are always in).
    `max_judgment_id`: leave out judgments made after this one (those a finished or resumed stage did not
    train on); they are counted in `newer`.
    """
    from alignloop.feedback import open_store
    from alignloop.feedback import preferences as store_preferences

    with open_store(db) as store:
        rows = store.judgment_rows()
    if rounds != "all":
        wanted = set(rounds)
        rows = [r for r in rows if r.get("round") in wanted]
    elif upto_round is not None:
        rows = [r for r in rows if r.get("round") is None or r["round"] <= upto_round]
    out = Preferences(source=f"the feedback store {db}")
    if max_judgment_id is not None:
        out.newer = sum(r["judgment_id"] > max_judgment_id for r in rows)
        rows = [r for r in rows if r["judgment_id"] <= max_judgment_id]
    out.judgments = len(rows)
    out.max_judgment_id = max((r["judgment_id"] for r in rows), default=None)
    out.fingerprint = judgments_fingerprint(rows)
    _add_rows(out, rows, aggregate, ties, ratings, store_preferences)
    if not len(out):
        which = "" if rounds == "all" else f" in rounds {sorted(rounds)}"
        raise DataError(f"the feedback store {db} holds no usable judgments{which}; annotate some first "
                        f"(`alignloop sample`, then `alignloop serve` or `alignloop annotate --simulated`)")
    return out


# ---- grouping by prompt -----------------------------------------------------------------

@dataclass
class PromptGroup:
    """One prompt, its distinct responses, and the comparisons among them (indices into `responses`)."""

    prompt: str
    responses: list[str] = field(default_factory=list)
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (better, worse, strength or nan)
    ties: list[tuple[int, int]] = field(default_factory=list)
    rankings: list[list[int]] = field(default_factory=list)  # best first
    ratings: list[tuple[int, float]] = field(default_factory=list)  # (response, score in [0, 1])

    def index(self, response: str) -> int:
        try:
            return self.responses.index(response)
        except ValueError:
            self.responses.append(response)
            return len(self.responses) - 1

    @property
    def n_comparisons(self) -> int:
        return len(self.pairs) + len(self.ties) + sum(len(r) * (len(r) - 1) // 2 for r in self.rankings)


def group_by_prompt(preferences: Preferences) -> list[PromptGroup]:
    """Merge every record on the same prompt into one group, in order of first appearance."""
    groups: dict[str, PromptGroup] = {}

    def group(prompt: str) -> PromptGroup:
        if prompt not in groups:
            groups[prompt] = PromptGroup(prompt)
        return groups[prompt]

    for c in preferences.comparisons:
        g = group(c.prompt)
        a, b = g.index(c.chosen), g.index(c.rejected)
        if c.tie:
            g.ties.append((a, b))
        else:
            g.pairs.append((a, b, float("nan") if c.strength is None else float(c.strength)))
    for r in preferences.rankings:
        g = group(r.prompt)
        g.rankings.append([g.index(text) for text in r.responses])
    for r in preferences.ratings:
        g = group(r.prompt)
        g.ratings.append((g.index(r.response), r.score))
    return list(groups.values())


def split_groups(groups: list[PromptGroup], val_fraction: float, seed: int
                 ) -> tuple[list[PromptGroup], list[PromptGroup]]:
    """(train, validation) by prompt, so no prompt is on both sides; the same seed gives the same split."""
    train, val = split_indices(len(groups), val_fraction, seed)
    return [groups[i] for i in train], [groups[i] for i in val]


# ---- tokenized groups and batches -----------------------------------------------------------

@dataclass
class EncodedGroup:
    group: PromptGroup
    encodings: list[dict[str, list[int]]]  # one `prompt + response` per response
    uid: int  # stable id (position in the source), for per-head bootstrap choices
    parts: Optional[tuple[list[int], list[list[int]]]] = None  # (prompt, responses) for packed reading

    @property
    def tokens(self) -> int:
        if self.parts is not None:
            return len(self.parts[0]) + sum(len(r) for r in self.parts[1])
        return sum(len(e["input_ids"]) for e in self.encodings)


def encode_groups(groups: Sequence[PromptGroup], encode: Callable[[str, str], dict[str, list[int]]],
                  first_uid: int = 0,
                  encode_parts: Optional[Callable[[str, list[str]], tuple[list[int], list[list[int]]]]] = None
                  ) -> list[EncodedGroup]:
    """Tokenize every response of every group once (and, with `encode_parts`, the prompt apart for packing)."""
    return [EncodedGroup(g, [encode(g.prompt, r) for r in g.responses], first_uid + i,
                         encode_parts(g.prompt, g.responses) if encode_parts else None)
            for i, g in enumerate(groups)]


def strength_margin(strength: torch.Tensor, scale: float) -> torch.Tensor:
    """Margin from preference strength 1-3: 0 for 1, scale/2 for 2, scale for 3; 0 when unknown.

    Llama 2 (Touvron et al. 2023, eq. 2) adds a larger margin for clearer preferences.
    """
    margin = (strength - 1.0).clamp(min=0.0, max=2.0) * (scale / 2.0)
    return torch.where(torch.isnan(strength), torch.zeros_like(margin), margin)


def collate_groups(groups: Sequence[EncodedGroup], pad_token_id: int, packed: bool = False
                   ) -> dict[str, torch.Tensor]:
    """One batch: every response once (dynamic padding), and index tensors for the comparisons.

    `packed`: one row per prompt with all its responses (`alignloop.reward.model.pack_groups`);
    responses keep the same order, so the comparison indices are the same either way.
    """
    from alignloop.reward.model import pack_groups

    encodings, pairs, ties, rankings, ratings = [], [], [], [], []
    for g in groups:
        base = len(encodings)
        encodings.extend(g.encodings)
        pairs.extend((base + a, base + b, s, g.uid) for a, b, s in g.group.pairs)
        ties.extend((base + a, base + b, g.uid) for a, b in g.group.ties)
        rankings.extend(([base + i for i in r], g.uid) for r in g.group.rankings)
        ratings.extend((base + i, score, g.uid) for i, score in g.group.ratings)
    batch = pack_groups([g.parts for g in groups], pad_token_id) if packed else pad_batch(encodings, pad_token_id)
    batch["pair_index"] = torch.tensor([[a, b] for a, b, _, _ in pairs], dtype=torch.long).reshape(-1, 2)
    batch["pair_strength"] = torch.tensor([s for _, _, s, _ in pairs], dtype=torch.float32)
    batch["pair_uid"] = torch.tensor([u for *_, u in pairs], dtype=torch.long)
    batch["tie_index"] = torch.tensor([[a, b] for a, b, _ in ties], dtype=torch.long).reshape(-1, 2)
    batch["tie_uid"] = torch.tensor([u for *_, u in ties], dtype=torch.long)
    width = max((len(r) for r, _ in rankings), default=0)
    ranking_index = torch.zeros((len(rankings), width), dtype=torch.long)
    ranking_mask = torch.zeros((len(rankings), width), dtype=torch.long)
    for row, (indices, _) in enumerate(rankings):
        ranking_index[row, :len(indices)] = torch.tensor(indices, dtype=torch.long)
        ranking_mask[row, :len(indices)] = 1
    batch["ranking_index"], batch["ranking_mask"] = ranking_index, ranking_mask
    batch["ranking_uid"] = torch.tensor([u for _, u in rankings], dtype=torch.long)
    batch["rating_index"] = torch.tensor([i for i, _, _ in ratings], dtype=torch.long)
    batch["rating_target"] = torch.tensor([s for _, s, _ in ratings], dtype=torch.float32)
    batch["rating_uid"] = torch.tensor([u for *_, u in ratings], dtype=torch.long)
    return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PACKED_INPUTS = ("input_ids", "position_ids", "packed_mask", "score_row", "score_col")


def length_grouped_order(lengths: Sequence[int], batch_size: int, rng: random.Random,
                         mega: int = 32) -> list[list[int]]:
    """Batches of indices with similar lengths (less padding), in random order.

    Shuffle, cut into mega-batches of `mega * batch_size`, sort each by length,
    cut into batches, then shuffle the batches: randomness stays, padding goes.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * mega
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


class PreferenceBatches:
    """Training batches addressed by index (epoch after epoch), so a resumed run sees the same data."""

    def __init__(self, groups: list[EncodedGroup], batch_size: int, pad_token_id: int, seed: int,
                 length_grouped: bool = True, packed: bool = False):
        if not groups:
            raise DataError("no training preferences left after the validation split; lower data.val_fraction")
        self.groups = groups
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.length_grouped = length_grouped
        self.packed = packed and all(g.parts is not None for g in groups)
        self.lengths = [g.tokens for g in groups]
        self._epochs: dict[int, list[list[int]]] = {}

    @property
    def batches_per_epoch(self) -> int:
        return (len(self.groups) + self.batch_size - 1) // self.batch_size

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            if self.length_grouped:
                self._epochs = {epoch: length_grouped_order(self.lengths, self.batch_size, rng)}
            else:
                order = list(range(len(self.groups)))
                rng.shuffle(order)
                self._epochs = {epoch: [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]}
        return self._epochs[epoch]

    def batch_groups(self, index: int) -> list[int]:
        """The indices of the groups in training batch `index`."""
        epoch, position = divmod(index, self.batches_per_epoch)
        return list(self._epoch(epoch)[position])

    def collate(self, group_ids: Sequence[int]) -> dict[str, torch.Tensor]:
        """A batch of the given groups."""
        return collate_groups([self.groups[i] for i in group_ids], self.pad_token_id, self.packed)

    def train_batch(self, index: int) -> dict[str, torch.Tensor]:
        return self.collate(self.batch_groups(index))


def fixed_batches(groups: list[EncodedGroup], batch_size: int, pad_token_id: int
                  ) -> Iterable[tuple[list[int], dict[str, torch.Tensor]]]:
    """Evaluation batches, sorted by length (least padding), always the same: (indices of the groups in it, batch)."""
    order = sorted(range(len(groups)), key=lambda i: groups[i].tokens)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        yield chosen, collate_groups([groups[i] for i in chosen], pad_token_id)
