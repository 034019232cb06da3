"""How good a reward model is on held-out preferences: accuracy, loss, calibration, accuracy by margin.

- accuracy: share of pairs where r(chosen) > r(rejected) (ties of the model count half);
- loss: the Bradley-Terry loss -log sigmoid(r_c - r_r), averaged;
- ece: expected calibration error of P(chosen preferred) = sigmoid(r_c - r_r),
  measured symmetrically (each pair also enters as "rejected over chosen" with
  label 0), so a model is judged on every probability it states;
- accuracy by margin: the same accuracy within buckets of |r_c - r_r| (is a
  confident model right more often?) and, where annotators said how strongly
  they preferred, by that strength;
- `accuracy_ci`: its 95% interval, a bootstrap over prompts
  (`alignloop.evaluation.statistics`);
- length: accuracy where people chose the longer and where they chose the
  shorter reply, the accuracy of "the longer reply wins" on the same pairs,
  how often the model prefers the longer reply, and the rank correlation of
  reward with length, all in characters: a reward model that pays for length
  is right where people chose the longer reply and wrong where they did not
  (Singhal et al. 2023, "A long way to go");
- truncation: accuracy on the pairs where the model read a reply cut at its
  `max_length`, and on the others.
"""

from __future__ import annotations

import array
import math
from typing import Any, Optional, Sequence

import torch

from alignloop.evaluation import statistics
from alignloop.reward import losses
from alignloop.reward.data import MODEL_INPUTS, EncodedGroup, fixed_batches

MARGIN_EDGES = (0.0, 0.5, 1.0, 2.0, math.inf)


@torch.no_grad()
def score_responses(reward, groups: Sequence[EncodedGroup], batch_size: int = 32) -> list[torch.Tensor]:
    """The reward of every response of every group: one tensor [responses] per group, on the CPU."""
    was_training = reward.training
    reward.eval()
    device = reward.device
    scores: list[Optional[torch.Tensor]] = [None] * len(groups)
    for indices, batch in fixed_batches(list(groups), batch_size, reward.tokenizer.pad_token_id):
        r = reward(**{k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}).float().cpu()
        offset = 0
        for i in indices:  # the batch holds each group's responses in turn
            size = len(groups[i].encodings)
            scores[i] = r[offset:offset + size]
            offset += size
    reward.train(was_training)
    return scores  # type: ignore[return-value]


def comparisons(groups: Sequence[EncodedGroup]) -> list[tuple[int, int, int, float]]:
    """(group, better response, worse response, strength or nan) of every strict comparison, rankings as pairs."""
    out = [(g, better, worse, strength)
           for g, group in enumerate(groups) for better, worse, strength in group.group.pairs]
    for g, group in enumerate(groups):
        for ranking in group.group.rankings:
            better, worse = losses.ranking_pairs(len(ranking))
            out.extend((g, ranking[b], ranking[w], float("nan")) for b, w in zip(better.tolist(), worse.tolist()))
    return out


def _compared(scores: Sequence[torch.Tensor], table: Sequence[tuple[int, int, int, float]]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not table:
        empty = torch.zeros(0)
        return empty, empty, empty
    chosen = torch.stack([scores[g][b] for g, b, _, _ in table])
    rejected = torch.stack([scores[g][w] for g, _, w, _ in table])
    return chosen, rejected, torch.tensor([s for *_, s in table], dtype=torch.float32)


def score_groups(reward, groups: Sequence[EncodedGroup], batch_size: int = 32
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected, strength) of every strict comparison in `groups` (rankings as their pairs)."""
    return _compared(score_responses(reward, groups, batch_size), comparisons(groups))


def _bucket_name(low: float, high: float) -> str:
    return f"{low:g}+" if math.isinf(high) else f"{low:g}-{high:g}"


def _accuracy_within(chosen: torch.Tensor, rejected: torch.Tensor, inside: torch.Tensor) -> dict[str, Any]:
    count = int(inside.sum())
    return {"n": count,
            "accuracy": float(losses.preference_accuracy(chosen[inside], rejected[inside])) if count else None}


def preference_metrics(chosen: torch.Tensor, rejected: torch.Tensor, strength: Optional[torch.Tensor] = None,
                       bins: int = 10) -> dict[str, Any]:
    """Accuracy, loss, ECE, n, and accuracy by |reward margin| and by annotator strength."""
    n = int(chosen.numel())
    if n == 0:
        return {"n": 0, "accuracy": None, "loss": None, "ece": None, "accuracy_by_margin": {}}
    diff = (chosen - rejected).double()
    probs = torch.sigmoid(diff)
    ece = losses.expected_calibration_error(torch.cat([probs, 1 - probs]),
                                            torch.cat([torch.ones(n), torch.zeros(n)]), bins)
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float(losses.preference_accuracy(chosen, rejected)),
        "loss": float(losses.bradley_terry_loss(chosen.double(), rejected.double())),
        "ece": float(ece),
        "mean_margin": float(diff.mean()),
    }
    by_margin = {}
    size = diff.abs()
    for low, high in zip(MARGIN_EDGES[:-1], MARGIN_EDGES[1:]):
        inside = (size >= low) & (size < high)
        if inside.any():
            by_margin[_bucket_name(low, high)] = _accuracy_within(chosen, rejected, inside)
    out["accuracy_by_margin"] = by_margin
    if strength is not None and strength.numel() == n and not torch.isnan(strength).all():
        by_strength = {}
        for value in sorted({float(s) for s in strength[~torch.isnan(strength)].tolist()}):
            by_strength[f"{value:g}"] = _accuracy_within(chosen, rejected, strength == value)
        out["accuracy_by_strength"] = by_strength
    return out


def correct_pairs(chosen: torch.Tensor, rejected: torch.Tensor) -> list[float]:
    """Per pair: 1 when the chosen reply has the higher reward, 0 when the lower, 1/2 for an exact tie."""
    return statistics.win_indicators(chosen.tolist(), rejected.tolist(), tolerance=0.0)


def accuracy_interval(chosen: torch.Tensor, rejected: torch.Tensor, units: Sequence[object]) -> list[float]:
    """95% bootstrap interval of the accuracy, resampling the units (prompts) the pairs belong to."""
    return list(statistics.share_interval(correct_pairs(chosen, rejected), units))


def length_diagnostics(chosen: torch.Tensor, rejected: torch.Tensor, chosen_length: Sequence[float],
                       rejected_length: Sequence[float], units: Sequence[object], response_scores: Sequence[float],
                       response_lengths: Sequence[float]) -> dict[str, Any]:
    """How far a reward model's accuracy rests on length.

    - `chosen_longer`, `chosen_shorter`, `same_length`: accuracy (with a bootstrap interval over `units`)
      on the pairs where people chose the longer, the shorter, or an equally long reply;
    - `longer_wins_accuracy`: the accuracy of always picking the longer reply on the same pairs (equal
      lengths count half), i.e. how often people chose the longer reply;
    - `model_prefers_longer`: on pairs of unequal length, how often the model gives the longer reply the
      higher reward (ties half): well above `longer_wins_accuracy` means the model overrates length;
    - `reward_length_spearman`: Spearman's rank correlation of reward with length over `response_scores`,
      `response_lengths` (every scored reply once).
    """
    c_len = torch.tensor(list(chosen_length), dtype=torch.float64)
    r_len = torch.tensor(list(rejected_length), dtype=torch.float64)
    longer, shorter, same = c_len > r_len, c_len < r_len, c_len == r_len
    out: dict[str, Any] = {"unit": "characters"}
    for name, inside in (("chosen_longer", longer), ("chosen_shorter", shorter), ("same_length", same)):
        bucket = _accuracy_within(chosen, rejected, inside)
        where = inside.nonzero().flatten().tolist()
        bucket["accuracy_ci"] = (accuracy_interval(chosen[inside], rejected[inside], [units[i] for i in where])
                                 if where else None)
        out[name] = bucket
    n = int(c_len.numel())
    out["longer_wins_accuracy"] = float((longer.double() + 0.5 * same.double()).sum() / n) if n else None
    differ = ~same
    r_long = torch.where(longer, chosen, rejected)[differ]
    r_short = torch.where(longer, rejected, chosen)[differ]
    out["model_prefers_longer"] = float(losses.preference_accuracy(r_long, r_short)) if bool(differ.any()) else None
    out["reward_length_spearman"] = statistics.spearman(list(response_scores), list(response_lengths))
    return out


def truncation_accuracy(chosen: torch.Tensor, rejected: torch.Tensor, cut: Sequence[bool]) -> dict[str, Any]:
    """Accuracy on the pairs where the model read a reply cut short (`cut`) and on the others (`whole`)."""
    flags = torch.tensor(list(cut), dtype=torch.bool)
    return {"cut": _accuracy_within(chosen, rejected, flags), "whole": _accuracy_within(chosen, rejected, ~flags)}


def _contains(haystack: Sequence[int], needle: Sequence[int]) -> bool:
    """Whether `needle` occurs in one piece in `haystack` (a byte search over 8-byte ids)."""
    if not needle:
        return True
    hay, pin = array.array("q", haystack).tobytes(), array.array("q", needle).tobytes()
    position = hay.find(pin)
    while position != -1 and position % 8:
        position = hay.find(pin, position + 1)
    return position != -1


def reply_ids(reward, prompt: str, response: str) -> list[int]:
    """The reply's token ids as the model would read them whole (after the prompt, with a decoder's EOS)."""
    if reward.is_decoder:
        from alignloop.data.formatting import encode_response

        return encode_response(reward.tokenizer, prompt, response)
    return list(reward.tokenizer(response, add_special_tokens=False)["input_ids"])


def reply_was_cut(reward, prompt: str, response: str, input_ids: Sequence[int]) -> bool:
    """Whether the model's input `input_ids` for (prompt, response) lacks part of the reply.

    Whatever the model's truncation rule, a reply read whole appears in its input in one piece.
    """
    return not _contains(input_ids, reply_ids(reward, prompt, response))


def pair_figures(chosen: torch.Tensor, rejected: torch.Tensor, units: Sequence[object],
                 chosen_text: Sequence[str], rejected_text: Sequence[str], responses: Sequence[tuple[float, str]],
                 cut: Optional[Sequence[bool]], max_length: Optional[int]) -> dict[str, Any]:
    """The accuracy's interval, the length diagnostics and (given `cut`) accuracy by truncation of scored pairs.

    `responses`: (reward, text) of every scored reply once, for the rank correlation with length.
    """
    out: dict[str, Any] = {"accuracy_ci": accuracy_interval(chosen, rejected, units),
                           "bootstrap": statistics.bootstrap_settings()}
    out["length"] = length_diagnostics(chosen, rejected, [len(t) for t in chosen_text],
                                       [len(t) for t in rejected_text], units, [r for r, _ in responses],
                                       [len(t) for _, t in responses])
    if cut is not None:
        out["truncation"] = {"max_length": max_length, **truncation_accuracy(chosen, rejected, cut)}
    return out


def preference_report(reward, groups: Sequence[EncodedGroup], batch_size: int = 32, bins: int = 10
                      ) -> dict[str, Any]:
    """Everything `reward eval` reports on preference data: `preference_metrics`, the accuracy's 95% interval
    (bootstrap over prompts), length diagnostics and accuracy by truncation at the model's `max_length`."""
    scores = score_responses(reward, groups, batch_size)
    table = comparisons(groups)
    chosen, rejected, strength = _compared(scores, table)
    figures = preference_metrics(chosen, rejected, strength, bins)
    if not figures["n"]:
        return figures
    responses = [g.group.responses for g in groups]
    cut = [[reply_was_cut(reward, g.group.prompt, text, encoding["input_ids"])
            for text, encoding in zip(g.group.responses, g.encodings)] for g in groups]
    figures.update(pair_figures(
        chosen, rejected, [g for g, *_ in table], [responses[g][b] for g, b, _, _ in table],
        [responses[g][w] for g, _, w, _ in table],
        [(float(r), text) for g in range(len(groups)) for r, text in zip(scores[g], responses[g])],
        [cut[g][b] or cut[g][w] for g, b, w, _ in table], reward.max_length))
    return figures


def gold_agreement(reward, prompts: list[str], responses_a: list[str], responses_b: list[str],
                   batch_size: int = 32, bins: int = 10) -> dict[str, Any]:
    """The reward model against the gold judge on pairs of responses: metrics of the gold-chosen side.

    `reward`: a `RewardModel`, or a `RewardEnsemble` (scored by the mean of its estimates; no truncation
    figures). Pairs the gold judge calls a tie are left out (and counted). The accuracy's interval
    resamples prompts (a prompt may come with several pairs).
    """
    from alignloop.judges.gold import gold_preference

    labels = [gold_preference(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
    keep = [i for i, label in enumerate(labels) if label != 0.5]
    score = reward.mean_scores if hasattr(reward, "mean_scores") else reward.score_texts
    kept_prompts = [prompts[i] for i in keep]
    r_a = score(kept_prompts, [responses_a[i] for i in keep], batch_size)
    r_b = score(kept_prompts, [responses_b[i] for i in keep], batch_size)
    a_wins = torch.tensor([labels[i] == 1.0 for i in keep], dtype=torch.bool)
    chosen = torch.where(a_wins, r_a, r_b)
    rejected = torch.where(a_wins, r_b, r_a)
    metrics = preference_metrics(chosen, rejected, bins=bins)
    metrics["gold_ties_skipped"] = len(labels) - len(keep)
    if metrics["n"]:
        chosen_text = [responses_a[i] if labels[i] == 1.0 else responses_b[i] for i in keep]
        rejected_text = [responses_b[i] if labels[i] == 1.0 else responses_a[i] for i in keep]
        cut = None
        if hasattr(reward, "encode"):
            cut = [any(reply_was_cut(reward, p, t, reward.encode(p, t)["input_ids"]) for t in (c, r))
                   for p, c, r in zip(kept_prompts, chosen_text, rejected_text)]
        texts = [responses_a[i] for i in keep] + [responses_b[i] for i in keep]
        responses = list(zip(r_a.tolist() + r_b.tolist(), texts))
        metrics.update(pair_figures(chosen, rejected, kept_prompts, chosen_text, rejected_text, responses, cut,
                                    getattr(reward, "max_length", None)))
    return metrics
