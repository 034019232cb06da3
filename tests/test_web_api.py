"""The JSON API: the whole annotator and admin flow, as scripts and simulated annotators use it."""

from __future__ import annotations

import json

import pytest
from web_helpers import PASSWORD, api_client, make_app, make_store, pair_records


@pytest.fixture
def app(store_url):
    store = make_store(store_url)
    yield make_app(store)
    store.close()


def test_admin_sets_up_and_annotators_work_their_queues(app):
    admin = api_client(app, "admin")
    assert admin.put("/api/settings", json={"overlap": 2, "guidelines": "Be kind."}).json()["overlap"] == 2
    assert admin.post("/api/users", json={"name": "bob", "password": PASSWORD}).status_code == 201
    assert admin.post("/api/users", json={"name": "bob", "password": PASSWORD}).status_code == 409
    assert admin.post("/api/users", json={"name": "eve", "password": "short"}).status_code == 422
    items = admin.post("/api/items", json={"records": pair_records(3) + [
        {"prompt": "rank", "responses": ["x", "y", "z"]}, {"prompt": "rate", "responses": ["only"]}]})
    assert items.status_code == 201 and len(items.json()["item_ids"]) == 5
    gold_item = items.json()["item_ids"][0]
    assert admin.post(f"/api/items/{gold_item}/gold", json={"choice": "a"}).status_code == 200

    judged = {}
    for name in ("ann", "bob"):
        client = api_client(app, name)
        assert client.get("/api/guidelines").json() == {"guidelines": "Be kind."}
        count = 0
        while (assignment := client.post("/api/queue/next").json()["assignment"]) is not None:
            item = assignment["item"]
            ids = [r["id"] for r in item["responses"]]
            assert "model" not in item["responses"][0]  # annotators judge blind
            body = {"pair": {"choice": "a" if name == "ann" else "b", "strength": 2},
                    "ranking": {"ranking": ids[::-1]},
                    "rating": {"ratings": {str(ids[0]): {"helpfulness": 4, "harmlessness": 5, "coherence": 4,
                                                         "accuracy": 3}}}}[item["kind"]]
            response = client.post(f"/api/assignments/{assignment['id']}/judgment", json=body)
            assert response.status_code == 201, response.text
            again = client.post(f"/api/assignments/{assignment['id']}/judgment", json=body)
            assert again.status_code == 409
            count += 1
        judged[name] = count
        assert client.get("/api/progress").json() == {"done": 5, "skipped": 0, "remaining": 0}
    assert judged == {"ann": 5, "bob": 5}

    table = {a["name"]: a for a in admin.get("/api/stats/annotators").json()["annotators"]}
    assert table["ann"]["done"] == 5 and table["ann"]["gold"] == {"gold_items": 1, "accuracy": 1.0}
    assert table["bob"]["gold"]["accuracy"] == 0.0
    agreement = admin.get("/api/stats/agreement").json()["agreement"]
    assert agreement["pair"]["items"] == 3 and agreement["pair"]["krippendorff_alpha"] < 0
    export = admin.get("/api/export", params={"format": "rich"})
    rows = [json.loads(line) for line in export.text.splitlines()]
    assert len(rows) == 10 and {r["annotator"] for r in rows} == {"ann", "bob"}
    trl = admin.get("/api/export", params={"format": "trl", "aggregate": "annotator"}).text.splitlines()
    assert len(trl) == 6 + 6  # 3 pairs x 2 annotators, and 3 ranking pairs x 2 annotators


def test_skip_disable_and_invites(app):
    admin = api_client(app, "admin")
    admin.post("/api/items", json={"records": pair_records(2)})
    ann = api_client(app, "ann")
    first = ann.post("/api/queue/next").json()["assignment"]
    assert ann.post(f"/api/assignments/{first['id']}/skip").json() == {"skipped": True}
    second = ann.post("/api/queue/next").json()["assignment"]
    assert second["item"]["id"] != first["item"]["id"]
    assert ann.get("/api/progress").json() == {"done": 0, "skipped": 1, "remaining": 1}

    users = {u["name"]: u["id"] for u in admin.get("/api/users").json()["users"]}
    assert admin.post(f"/api/users/{users['admin']}/disable").status_code == 409
    assert admin.post(f"/api/users/{users['ann']}/disable").json()["user"]["active"] is False
    assert ann.post("/api/queue/next").status_code == 401  # signed out
    assert api_client(app).post("/api/login", json={"name": "ann", "password": PASSWORD}).status_code == 401

    url = admin.post("/api/invites", json={}).json()["url"]
    path = url.split("testserver", 1)[1]
    visitor = api_client(app)
    form = visitor.get(path)
    assert form.status_code == 200
    csrf = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    made = visitor.post(path, data={"csrf_token": csrf, "name": "newbie", "password": PASSWORD,
                                    "password2": PASSWORD})
    assert made.status_code == 303
    assert visitor.get(path).status_code == 404  # one use only
    newbie = api_client(app, "newbie")
    assert newbie.get("/api/me").json()["user"]["role"] == "annotator"


def test_upload_reports_a_bad_line_and_stores_nothing(app):
    admin = api_client(app, "admin")
    good = json.dumps({"prompt": "p", "responses": ["a", "b"]})
    bad = admin.post("/api/items/upload", files={"file": ("x.jsonl", f"{good}\n{{oops\n{good}\n")},
                     data={"format": "responses"})
    assert bad.status_code == 422 and "line 2" in bad.json()["detail"]
    assert admin.get("/api/stats/agreement").json()["counts"]["items"] == 0
    ok = admin.post("/api/items/upload", files={"file": ("x.jsonl", f"{good}\n{good}\n")}, data={"kind": "pair"})
    assert ok.status_code == 201 and ok.json() == {"format": "responses", "records": 1, "items": 1, "already": 0,
                                                   "skipped": {"repeated in the file": [2]}}
