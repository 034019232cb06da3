"""The feedback store on SQLite and on a real PostgreSQL server: items, the overlap rule, judgments, migrations."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import select, text

from alignloop.errors import DataError
from alignloop.feedback import Answer, Conflict, NotFound, open_store
from alignloop.feedback import db as feedback_db
from alignloop.feedback.models import Base, Judgment, Response


@pytest.fixture
def store(store_url):
    with open_store(store_url) as opened:
        yield opened


def _answer_for(view) -> Answer:  # noqa: ANN001
    if view.item.kind == "pair":
        return Answer(choice="a", strength=2)
    if view.item.kind == "ranking":
        return Answer(ranking=[r.id for r in view.item.responses])
    rid = view.item.responses[0].id
    return Answer(ratings={rid: {"helpfulness": 4, "harmlessness": 5, "coherence": 3, "accuracy": 2}})


def _work_through(store, user_id: int) -> list[int]:
    """Judge everything the queue gives `user_id`; returns the item ids seen."""
    seen = []
    while (view := store.next_assignment(user_id)) is not None:
        seen.append(view.item.id)
        store.submit(view.id, user_id, _answer_for(view))
    return seen


def test_samples_become_pair_and_ranking_items_with_model_and_sampling(store):
    round_id = store.create_round(model_name="tiny-gpt", sampling={"temperature": 0.8})
    records = [{"prompt": "Once upon a time", "responses": ["r0", "r1", "r2", "r3"]}]
    pairs = store.add_samples(round_id, records, "pair", model_name="tiny-gpt", sampling={"temperature": 0.8, "k": 4})
    ranking = store.add_samples(round_id, records, "ranking", model_name="tiny-gpt", sampling={"k": 4})
    assert len(pairs) == 6 and len(ranking) == 1  # C(4, 2) pairs, one 4-way ranking
    shown = {frozenset(r.text for r in store.get_item(i).responses) for i in pairs}
    assert shown == {frozenset({f"r{i}", f"r{j}"}) for i in range(4) for j in range(i + 1, 4)}
    item = store.get_item(ranking[0])
    assert item.kind == "ranking" and [r.text for r in item.responses] == ["r0", "r1", "r2", "r3"]
    assert {r.model_name for r in item.responses} == {"tiny-gpt"}
    with store.read() as s:
        assert s.scalars(select(Response.sampling)).first() == {"temperature": 0.8, "k": 4}
    assert store.rounds()[0]["number"] == 1 and store.rounds()[0]["sampling"] == {"temperature": 0.8}
    assert len(store.add_samples(round_id, records, "pair", pairs_per_prompt=2)) == 2


def test_each_item_gets_overlap_annotators_and_nobody_sees_one_twice(store):
    store.set_overlap(2)
    store.add_samples(None, [{"prompt": f"p{i}", "responses": ["a", "b"]} for i in range(5)])
    users = [store.add_user(f"u{i}", None) for i in range(3)]
    seen = {u: _work_through(store, u) for u in users}
    for items in seen.values():
        assert len(items) == len(set(items))
    per_item = Counter(i for items in seen.values() for i in items)
    assert set(per_item.values()) == {2} and len(per_item) == 5
    assert store.progress(users[0]).remaining == 0
    assert sum(store.progress(u).done for u in users) == 10


def test_skip_gives_the_item_to_someone_else_but_never_back(store):
    store.add_samples(None, [{"prompt": "p", "responses": ["a", "b"]}])  # overlap 1
    alice, bob = store.add_user("alice", None), store.add_user("bob", None)
    first = store.next_assignment(alice)
    assert store.next_assignment(bob) is None  # the only slot is taken
    assert store.next_assignment(alice).id == first.id  # the open one comes back on reload
    store.skip(first.id, alice)
    assert store.next_assignment(alice) is None
    given = store.next_assignment(bob)
    assert given.item.id == first.item.id
    with pytest.raises(Conflict):
        store.submit(first.id, alice, Answer(choice="a", strength=1))
    assert store.progress(alice) == store.progress(alice).__class__(done=0, skipped=1, remaining=0)


def test_judgments_are_validated_owned_and_unique(store):
    store.add_samples(None, [{"prompt": "p", "responses": ["a", "b"]}])
    alice, bob = store.add_user("alice", None), store.add_user("bob", None)
    view = store.next_assignment(alice)
    with pytest.raises(DataError, match="strength"):
        store.submit(view.id, alice, Answer(choice="a"))
    with pytest.raises(DataError, match="choice"):
        store.submit(view.id, alice, Answer(choice="maybe"))
    with pytest.raises(NotFound):
        store.submit(view.id, bob, Answer(choice="a", strength=1))
    with pytest.raises(NotFound):
        store.get_assignment(view.id, bob)
    a_id = view.item.responses[0].id
    store.submit(view.id, alice, Answer(choice="tie", strength=3, ratings={a_id: {"coherence": 4}},
                                        critique="x'); DROP TABLE judgments; --"))
    with pytest.raises(Conflict):
        store.submit(view.id, alice, Answer(choice="b", strength=1))
    [row] = store.judgment_rows()
    assert row["choice"] == "tie" and row["strength"] is None  # strength means nothing for a tie
    assert row["ratings"] == {a_id: {"coherence": 4}} and row["time_spent_ms"] >= 0  # measured by the store
    assert row["critique"] == "x'); DROP TABLE judgments; --"


def test_disabling_an_annotator_releases_their_item_and_signs_them_out(store):
    store.add_samples(None, [{"prompt": "p", "responses": ["a", "b"]}])
    alice, bob = store.add_user("alice", "h"), store.add_user("bob", "h")
    from datetime import timedelta
    store.create_session(alice, "tok", "csrf", timedelta(hours=1))
    assert store.session_user("tok")[0].name == "alice"
    store.next_assignment(alice)
    store.set_active(alice, False)
    assert store.session_user("tok") is None
    assert store.next_assignment(bob) is not None


def test_concurrent_annotators_keep_the_overlap_rule(store):
    store.set_overlap(2)
    store.add_samples(None, [{"prompt": f"p{i}", "responses": ["a", "b"]} for i in range(12)])
    users = [store.add_user(f"u{i}", None) for i in range(6)]
    errors: list[BaseException] = []

    def worker(user_id: int) -> None:
        try:
            _work_through(store, user_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with store.read() as s:
        per_item = Counter(s.scalars(select(Judgment.item_id)))
        pairs = Counter(s.execute(select(Judgment.item_id, Judgment.user_id)).all())
    assert set(per_item.values()) == {2} and len(per_item) == 12
    assert max(pairs.values()) == 1


def test_uploaded_items_with_gold_and_a_bad_record_store_nothing(store):
    with pytest.raises(DataError, match="record 2"):
        store.add_items([{"prompt": "p", "responses": ["a", "b"]}, {"prompt": "q", "responses": "oops"}])
    assert store.counts()["items"] == 0 and store.counts()["prompts"] == 0
    ids = store.add_items([{"prompt": "p", "responses": ["a", "b"], "gold": {"choice": "b"}},
                           {"prompt": "q", "responses": ["x", "y", "z"], "gold": {"ranking": [2, 0, 1]}},
                           {"prompt": "r", "responses": ["only"]}, {"prompt": "prompt only"}])
    assert [store.get_item(i).kind for i in ids] == ["pair", "ranking", "rating"]
    assert store.counts()["prompts"] == 4


def test_preference_records_expand_rankings_and_take_the_majority(store):
    store.set_overlap(3)
    [pair] = store.add_samples(None, [{"prompt": "p", "responses": ["x", "y"]}], seed=1)
    users = [store.add_user(f"u{i}", None) for i in range(3)]
    a, b = [r.text for r in store.get_item(pair).responses]
    for user, choice in zip(users, ["a", "a", "b"]):
        view = store.next_assignment(user)
        store.submit(view.id, user, Answer(choice=choice, strength=3 if user == users[0] else 1))
    [majority] = store.preference_records()
    assert (majority["chosen"], majority["rejected"]) == (a, b)
    assert majority["strength"] == 2.0 and majority["votes"]["a_over_b"] == 2 and not majority["tie"]
    assert len(store.preference_records(aggregate="annotator")) == 3

    [ranking] = store.add_samples(None, [{"prompt": "q", "responses": ["r1", "r2", "r3"]}], "ranking")
    view = store.next_assignment(users[0])
    ids = {r.text: r.id for r in view.item.responses}
    store.submit(view.id, users[0], Answer(ranking=[ids["r3"], ids["r1"], ids["r2"]]))
    pairs = {(r["chosen"], r["rejected"]) for r in store.preference_records() if r["item_id"] == ranking}
    assert pairs == {("r3", "r1"), ("r3", "r2"), ("r1", "r2")}
    assert store.ranking_records()[0]["responses"] == ["r3", "r1", "r2"]


def test_new_database_is_at_head_and_matches_the_models(store_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with open_store(store_url) as store:
        assert feedback_db.current_revision(store.write_engine) == feedback_db.head_revision()
        with store.write_engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []


def test_an_old_database_is_upgraded_with_its_data(store_url):
    url = feedback_db.database_url(store_url)
    write, read = feedback_db.make_engines(url)
    feedback_db.upgrade(write, "0001")
    with write.begin() as conn:
        conn.execute(text("INSERT INTO users (name, role, active, origin, created_at) "
                          "VALUES ('old', 'annotator', true, 'person', '2024-01-01 00:00:00')"))
        assert "web_sessions" not in conn.dialect.get_table_names(conn)
    write.dispose()
    read.dispose()
    with open_store(store_url) as store:
        assert store.user_by_name("old") is not None
        from datetime import timedelta
        store.create_session(store.user_by_name("old").id, "t", "c", timedelta(minutes=1))


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    with open_store(tmp_path / "f.db") as store:
        with store.write_engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    with pytest.raises(Exception, match="directory"):
        open_store(tmp_path)
