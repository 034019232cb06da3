"""The stage-2 commands: users add, feedback import/export, annotate --simulated (in-process CLI runs)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignloop.cli.main import app
from alignloop.feedback import open_store

runner = CliRunner()

STORIES = [
    {"prompt": "Once upon a time, there was a little cat named Tom.",
     "responses": ["Tom was kind and shared his toys with his friends. They all smiled. The end.",
                   "Tom was mean and broke the toys. Everyone cried and was sad forever.",
                   "Tom Tom Tom Tom Tom Tom Tom Tom",
                   "A dog named Max went to the park and played with a ball. Max was happy. The end."]},
    {"prompt": "Lily found a shiny box in the garden.",
     "responses": ["Lily opened the box and found a kind note. She smiled and shared it with her mom. The end.",
                   "box box box box"]},
]


def invoke(*args: str, stdin: str | None = None):  # noqa: ANN201
    return runner.invoke(app, list(args), input=stdin)


def test_users_add_needs_a_real_password_and_a_free_name(tmp_path):
    run = str(tmp_path / "run")
    made = invoke("users", "add", "root", "--admin", "--run", run, "--password-stdin", stdin="a long password\n")
    assert made.exit_code == 0, made.output
    short = invoke("users", "add", "ann", "--run", run, "--password-stdin", stdin="short\n")
    assert short.exit_code == 2 and "at least 8 characters" in short.output
    again = invoke("users", "add", "root", "--run", run, "--password-stdin", stdin="another password\n")
    assert again.exit_code == 2 and "already exists" in again.output
    listing = invoke("users", "list", "--run", run)
    assert "root\tadmin\tactive" in listing.output
    with open_store(tmp_path / "run" / "feedback.db") as store:
        assert [u.name for u in store.list_users()] == ["root"]
    assert invoke("users", "list").exit_code == 2  # no --run nor --db


def test_import_export_round_trip_and_a_bad_line(tmp_path):
    run = str(tmp_path / "run")
    records = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
               {"chosen": "\n\nHuman: bye\n\nAssistant: see you", "rejected": "\n\nHuman: bye\n\nAssistant: ok"}]
    source = tmp_path / "hh.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert invoke("feedback", "import", str(source), "--run", run).exit_code == 0
    out = tmp_path / "out.jsonl"
    result = invoke("feedback", "export", "--run", run, "--format", "hh", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == records

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(records[0]) + "\n{oops\n")
    failed = invoke("feedback", "import", str(broken), "--run", run, "--format", "hh")
    assert failed.exit_code == 2 and "line 2" in failed.output and "Traceback" not in failed.output
    bad_flag = invoke("feedback", "export", "--run", run, "--ties", "maybe", "--out", str(out))
    assert bad_flag.exit_code == 2


def _annotate_simulated(run, *settings):
    """A fresh run holding STORIES as pair items plus one ranking, annotated by three simulated personas."""
    source = run.parent / f"{run.name}-samples.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in STORIES))
    assert invoke("feedback", "import", str(source), "--run", str(run), "--kind", "pair").exit_code == 0
    [item] = open_store(run / "feedback.db").add_items([{"prompt": STORIES[0]["prompt"],
                                                         "responses": STORIES[0]["responses"][:3]}])
    result = invoke("annotate", "--run", str(run), "--simulated", "personas=3", "overlap=2", "careless=0.34",
                    "critique_share=1.0", *settings)
    assert result.exit_code == 0, result.output
    with open_store(run / "feedback.db") as store:
        rows = store.judgment_rows()
        table = {a["name"]: a for a in store.annotator_table()}
    assert len(rows) == 2 * (6 + 1 + 1)  # 7 pairs and 1 ranking, 2 annotators each
    assert all(a["origin"] == "simulated" and a["remaining"] == 0 for a in table.values())
    assert len(table) == 3 and any(name.startswith("sim-careless") for name in table)
    per_item: dict[int, set] = {}
    for row in rows:
        per_item.setdefault(row["item_id"], set()).add(row["annotator"])
        assert row["critique"]
    assert all(len(names) == 2 for names in per_item.values())
    ranking = [r for r in rows if r["item_id"] == item]
    assert all(sorted(r["ranking"]) == sorted(x["id"] for x in r["responses"]) for r in ranking)
    return sorted((r["item_id"], r["annotator"], r["choice"], r["strength"], str(r["ranking"]), r["critique"])
                  for r in rows)


def test_annotate_simulated_goes_through_the_api_and_respects_overlap(tmp_path):
    pytest.importorskip("alignloop.judges.personas")
    run = tmp_path / "run"
    first = _annotate_simulated(run)
    # Taking turns, the personas replay: a second run on the same items makes the same judgments.
    assert _annotate_simulated(tmp_path / "again") == first
    # Side by side in threads, the same rules hold (who judges what may differ).
    _annotate_simulated(tmp_path / "threads", "concurrent=true")
    assert invoke("annotate", "--run", str(run)).exit_code == 2  # people use the browser
