"""`sample --select`: the choice of pairs (pure), the store loading chosen pairs, and the stage end to end."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from reward_helpers import good_bad_pairs, write_jsonl
from test_loop_crash import LOOP

from alignloop.config.base import load_config
from alignloop.errors import ConfigError, DataError
from alignloop.sample.config import SampleConfig
from alignloop.sample import select


def test_candidates_are_every_pair_of_every_prompt():
    assert select.candidate_pairs([3, 2, 1]) == [(0, 0, 1), (0, 0, 2), (0, 1, 2), (1, 0, 1)]
    assert select.limit_candidates(5, None, random.Random(0)) == [0, 1, 2, 3, 4]
    kept = select.limit_candidates(10, 4, random.Random(0))
    assert len(kept) == 4 and kept == sorted(set(kept))


def test_uncertain_takes_the_highest_variance_pairs_and_keeps_the_random_share():
    # P(a preferred) of 6 pairs under 4 estimates. Standard deviations (population), worked by hand:
    # pair 0: all 0.5 -> 0; pair 1: 0.2/0.8 twice -> 0.3; pair 2: 0.4/0.6 twice -> 0.1;
    # pair 3: 0.1/0.9 twice -> 0.4; pair 4: 0.3/0.7 twice -> 0.2; pair 5: 0.9 x4 -> 0.
    p = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.8, 0.2, 0.8], [0.4, 0.6, 0.4, 0.6],
                      [0.1, 0.9, 0.1, 0.9], [0.3, 0.7, 0.3, 0.7], [0.9, 0.9, 0.9, 0.9]])
    scores, meaning = select.uncertainty(p, "spread")
    assert meaning == "disagreement"
    assert torch.allclose(scores, torch.tensor([0.0, 0.3, 0.1, 0.4, 0.2, 0.0]), atol=1e-6)
    assert select.highest(scores, 3) == [3, 1, 4]
    # A budget of 4 with a quarter at random: one pair drawn uniformly, the other three the most disputed
    # of the rest (the drawn pair is never taken twice, and ties go to the lower index).
    drawn = select.random_share(len(p), 4, 0.25, random.Random(0))
    assert len(drawn) == 1
    chosen = select.highest(scores, 3, drawn)
    assert not set(chosen) & set(drawn)
    rest = sorted(set(range(6)) - set(drawn), key=lambda i: (-float(scores[i]), i))
    assert chosen == rest[:3]
    assert select.highest(scores, 3, [3]) == [1, 4, 2]
    assert select.highest(torch.tensor([0.0, 0.0, 0.0]), 2) == [0, 1]
    assert select.random_share(6, 4, 0.0, random.Random(0)) == []
    assert select.random_share(6, 4, 1.0, random.Random(0)) == sorted(select.random_share(6, 4, 1.0, random.Random(0)))
    assert len(select.random_share(3, 8, 1.0, random.Random(0))) == 3  # never more than the candidates


def test_information_ranks_confident_contradictions_above_shared_coin_flips():
    # BALD: H(mean p) - mean H(p), H(p) = -p ln p - (1-p) ln(1-p). Entropies worked by hand (nats):
    # H(.5) = .693147, H(.2) = .500402, H(.1) = .325083, H(.4) = .673012, H(.7) = .610864,
    # H(.75) = .562335, H(.55) = .688139, H(.95) = .198515.
    p = torch.tensor([[0.5, 0.5, 0.5, 0.5],     # all call it a coin flip: 0
                      [0.2, 0.8, 0.2, 0.8],     # .693147 - .500402 = .192745
                      [0.4, 0.6, 0.4, 0.6],     # .693147 - .673012 = .020135
                      [0.1, 0.9, 0.1, 0.9],     # .693147 - .325083 = .368064
                      [0.5, 0.5, 0.9, 0.9],     # H(.7) - (2 H(.5) + 2 H(.9)) / 4 = .610864 - .509115 = .101749
                      [0.55, 0.95, 0.55, 0.95],  # H(.75) - (H(.55) + H(.95)) / 2 = .562335 - .443327 = .119008
                      [0.9, 0.9, 0.9, 0.9]])    # all agree: 0
    scores, meaning = select.uncertainty(p)
    assert meaning == "information"
    expected = torch.tensor([0.0, 0.192745, 0.020135, 0.368064, 0.101749, 0.119008, 0.0])
    assert torch.allclose(scores, expected, atol=2e-6)
    assert select.highest(scores, 4) == [3, 1, 5, 4]
    # The last two contradictions have the same spread (0.2) of P(a preferred); the one nearer a shared coin
    # flip is worth less to ask, which the spread cannot tell apart.
    spread, _ = select.uncertainty(p, "spread")
    assert torch.allclose(spread[4], spread[5], atol=1e-6) and scores[5] > scores[4]
    assert torch.equal(select.uncertainty(p[:, :1])[0], select.uncertainty(p[:, :1], "spread")[0])


def test_one_estimate_asks_about_the_pairs_nearest_a_coin_flip():
    p = torch.tensor([[0.9], [0.45], [0.2], [0.58]])
    scores, meaning = select.uncertainty(p)
    assert meaning == "nearness to 0.5"
    assert torch.allclose(scores, torch.tensor([0.1, 0.45, 0.2, 0.42]), atol=1e-6)
    assert select.highest(scores, 2) == [1, 3]


def test_farthest_first_covers_the_directions_and_ignores_the_sign():
    # Three directions, each several times; row 4 is row 0 reversed (the same question, a and b swapped).
    x, y, z = torch.eye(3)
    directions = torch.stack([x, 0.9 * x, y, 1.1 * y, -x, 0.5 * z, 0.2 * z])
    first = select.farthest_first(directions, 3)
    assert first[0] == 3  # the longest direction first
    assert {int(torch.argmax(directions[i].abs())) for i in first} == {0, 1, 2}  # one of each direction
    assert 4 not in first[:3]  # -x is as close to x as x itself
    # With the random share taken, the picks cover what it left out: y is covered by row 2.
    picked = select.farthest_first(directions, 2, taken=[2])
    assert 2 not in picked and {int(torch.argmax(directions[i].abs())) for i in picked} == {0, 2}
    assert select.farthest_first(directions, 10, taken=[0, 1]) and len(select.farthest_first(directions, 10, taken=[0, 1])) == 5


def test_text_features_are_stable_unit_vectors():
    one = select.text_features("Tom was happy. The end.")
    assert torch.allclose(one.norm(), torch.tensor(1.0), atol=1e-6)
    assert torch.equal(one, select.text_features("tom WAS happy the end"))  # case and punctuation do not count
    assert not torch.equal(one, select.text_features("Tom was sad. The end."))
    assert select.text_features("").norm() == 0


def test_config_needs_pairs_and_a_budget(tmp_path):
    cfg = load_config(SampleConfig, None, ["select=uncertain", "pairs_per_prompt=2", "select.random_fraction=0.5"])
    assert cfg.select.mode == "uncertain" and cfg.select.random_fraction == 0.5 and cfg.selects
    assert not load_config(SampleConfig, None, []).selects  # the default is today's random pairs
    with pytest.raises(ConfigError, match="set pairs_per_prompt=N .* or select.budget=N"):
        load_config(SampleConfig, None, ["select.mode=uncertain"])
    with pytest.raises(ConfigError, match="needs item_kind=pair, not ranking"):
        load_config(SampleConfig, None, ["select=diverse", "select.budget=4", "item_kind=ranking"])
    result = run_cli("sample", "--run", str(tmp_path / "run"), "--select", "most", "pairs_per_prompt=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "select.mode" in result.stderr.strip().splitlines()[-1]


def test_store_loads_the_chosen_pairs_only(tmp_path):
    from alignloop.feedback import open_store

    with open_store(tmp_path / "feedback.db") as store:
        round_id = store.create_round()
        records = [{"prompt": "p0", "responses": ["a", "b", "c", "d"], "pairs": [[0, 3], [1, 2]]},
                   {"prompt": "p1", "responses": ["e", "f"], "pairs": [[0, 1]]}]
        ids = store.add_samples(round_id, records, "pair", seed=0)
        made = [{r.text for r in store.get_item(i).responses} for i in ids]
        assert made == [{"a", "d"}, {"b", "c"}, {"e", "f"}]
        for bad in ([[0, 4]], [[1, 1]], "0,1", [[0, True]]):
            with pytest.raises(DataError, match="record 1: 'pairs' must be a list"):
                store.add_samples(round_id, [{"prompt": "p", "responses": ["a", "b", "c", "d"], "pairs": bad}])
        assert store.counts()["items"] == 3  # all or nothing


# ---- the stage end to end, on the tiny pretrained run with a two-head reward model -------------------

SAMPLE = ["k=4", "pairs_per_prompt=2", "sampling.max_new_tokens=6", "sampling.batch_size=16", "device=cpu"]
PROMPTS = ["Tom went to the park.", "Mia saw a cat.", "Ben", "Lily went to the beach.", "Sam was happy.",
           "Anna went to the town.", "Max saw a dog.", "Zoe"]


@pytest.fixture(scope="module")
def ensemble_run(pretrained_run, tmp_path_factory) -> Path:
    """The tiny pretrained run with round 1's reward model: two heads trained on a few preference pairs."""
    run = tmp_path_factory.mktemp("select") / "run"
    shutil.copytree(pretrained_run, run)
    prefs = write_jsonl(run.parent / "prefs.jsonl", good_bad_pairs(32))
    result = run_cli("reward", "--run", str(run), f"data.path={prefs}", "ensemble.heads=2", "train.epochs=1",
                     "train.batch_size=8", "train.eval_every=100", "train.stats_responses=8", "train.threads=1",
                     "model.max_length=48")
    assert result.returncode == 0, result.stderr
    write_jsonl(run / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    return run


def _items(run: Path) -> list[tuple[str, frozenset]]:
    """(prompt, {response texts}) of every item in the store."""
    with sqlite3.connect(run / "feedback.db") as db:
        rows = db.execute("select items.id, prompts.text, responses.text from items join prompts on "
                          "items.prompt_id = prompts.id join item_responses on item_responses.item_id = items.id "
                          "join responses on responses.id = item_responses.response_id").fetchall()
    grouped: dict[int, tuple[str, set]] = {}
    for item, prompt, text in rows:
        grouped.setdefault(item, (prompt, set()))[1].add(text)
    return sorted((prompt, frozenset(texts)) for prompt, texts in grouped.values())


@pytest.mark.slow
def test_sample_select_uncertain_end_to_end_and_after_a_kill(ensemble_run, tmp_path):
    from alignloop.reward.ensemble import load_ensemble, mutual_information

    run = tmp_path / "run"
    shutil.copytree(ensemble_run, run)
    args = ["sample", "--run", str(run), f"prompts={run / 'prompts.jsonl'}", "--select", "uncertain", *SAMPLE]
    crashed = run_cli(*args, env={"ALIGNLOOP_CRASH_AT": "sample:selected"})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    chosen_before = (run / "rounds" / "002" / "selection.jsonl").read_bytes()
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reusing the pairs chosen before an interruption" in result.stderr
    assert (run / "rounds" / "002" / "selection.jsonl").read_bytes() == chosen_before

    records = [json.loads(line) for line in (run / "rounds" / "002" / "samples.jsonl").read_text().splitlines()]
    assert [len(r["responses"]) for r in records] == [4] * 8  # every sampled response stays in samples.jsonl
    rows = [json.loads(line) for line in chosen_before.decode().splitlines()]
    assert len(rows) == 8 * 6  # every pair of every prompt was a candidate
    chosen = [r for r in rows if r["selected"]]
    drawn = [r for r in chosen if r["share"] == "random"]
    assert len(chosen) == 16 and len(drawn) == 4  # the budget of 8 prompts x 2 pairs, a quarter at random
    # The rest are the pairs the two heads disagree on most (select.score=information), by the ensemble's own
    # figures computed here.
    ensemble = load_ensemble(run / "rounds" / "001" / "reward", device="cpu")
    assert ensemble.size == 2
    prompts = [records[r["prompt_index"]]["prompt"] for r in rows]
    a = [records[r["prompt_index"]]["responses"][r["pair"][0]] for r in rows]
    b = [records[r["prompt_index"]]["responses"][r["pair"][1]] for r in rows]
    probabilities = ensemble.preference_probabilities(prompts, a, b)
    spread = probabilities.std(dim=1, unbiased=False)
    information = mutual_information(probabilities)
    # Scored in other batches than the stage's: equal to float32 rounding of rewards of order 1.
    assert torch.allclose(spread, torch.tensor([r["disagreement"] for r in rows]), atol=1e-4)
    assert torch.allclose(information, torch.tensor([r["information"] for r in rows]), atol=1e-4)
    assert float(information.max()) > 1e-4  # the heads do disagree: the order below means something
    undrawn = [i for i, r in enumerate(rows) if r["share"] != "random"]
    by_information = sorted(undrawn, key=lambda i: -float(information[i]))
    picked = [i for i, r in enumerate(rows) if r["share"] == "uncertain"]
    assert min(float(information[i]) for i in picked) >= float(information[by_information[11]]) - 1e-4
    assert sorted(r["rank"] for r in chosen if r["share"] == "uncertain") == list(range(1, 13))

    # The store holds exactly the chosen pairs, as ordinary pair items, loaded once.
    wanted = sorted((records[r["prompt_index"]]["prompt"],
                     frozenset(records[r["prompt_index"]]["responses"][k] for k in r["pair"])) for r in chosen)
    assert _items(run) == wanted
    entry = json.loads((run / "manifest.json").read_text())["stages"]["sample:002"]
    assert entry["status"] == "done" and entry["items"] == 16
    assert entry["select"] == {"mode": "uncertain", "asked": "uncertain", "candidates": 48, "pairs": 16, "random": 4,
                               "reward": str(run / "rounds" / "001" / "reward"), "estimates": 2}


@pytest.mark.slow
def test_without_a_reward_model_uncertain_falls_back_to_random_and_diverse_works(pretrained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    write_jsonl(run / "prompts.jsonl", [{"prompt": p} for p in PROMPTS[:4]])
    args = ["sample", "--run", str(run), f"prompts={run / 'prompts.jsonl'}", *SAMPLE]
    result = run_cli(*args, "--select", "uncertain", "select.random_fraction=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no reward model before round 1, so this round's pairs are drawn at random" in result.stderr
    rows = [json.loads(line) for line in (run / "rounds" / "001" / "selection.jsonl").read_text().splitlines()]
    assert sum(r["selected"] for r in rows) == 8 and {r["share"] for r in rows if r["selected"]} == {"random"}
    entry = json.loads((run / "manifest.json").read_text())["stages"]["sample:001"]
    assert entry["select"]["mode"] == "random" and entry["select"]["asked"] == "uncertain"
    assert entry["select"]["note"] == "no reward model before round 1"

    result = run_cli(*args, "--select", "diverse", "select.budget=5")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "rounds" / "002" / "selection.jsonl").read_text().splitlines()]
    assert sum(r["selected"] for r in rows) == 5 and sum(r["share"] == "random" for r in rows) == 1
    assert len(_items(run)) == 8 + 5


@pytest.mark.slow
def test_the_loop_selects_from_round_two_with_the_previous_rounds_ensemble(sft_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    two = [a if a != "1" else "2" for a in LOOP]  # --rounds 2
    result = run_cli("loop", "--run", str(run), *two, "sample.k=3", "sample.select=uncertain",
                     "reward.ensemble.heads=2")
    assert result.returncode == 0, result.stderr[-3000:]
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["sample:001"]["select"] == {"mode": "random", "asked": "uncertain", "candidates": 18, "pairs": 12,
                                              "random": 12, "note": "no reward model before round 1"}
    assert stages["sample:002"]["select"] == {"mode": "uncertain", "asked": "uncertain", "candidates": 18,
                                              "pairs": 12, "random": 3, "estimates": 2,
                                              "reward": str(run / "rounds" / "001" / "reward")}
    rows = [json.loads(line) for line in (run / "rounds" / "002" / "selection.jsonl").read_text().splitlines()]
    assert sum(r["share"] == "uncertain" for r in rows) == 9 and all("disagreement" in r for r in rows)
