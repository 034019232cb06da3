"""The HTML pages for admins and annotators, driven through their forms (no JavaScript)."""

from __future__ import annotations

import json
import re

from web_helpers import PASSWORD, make_app, make_store, pair_records
from starlette.testclient import TestClient


def signed_in(app, name: str) -> tuple[TestClient, str]:
    client = TestClient(app, follow_redirects=False)
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    response = client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": csrf, "next": "/"})
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"])
    return client, re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def test_admin_pages_and_forms(tmp_path):
    store = make_store(tmp_path / "f.db")
    app = make_app(store)
    admin, csrf = signed_in(app, "admin")
    upload = "".join(json.dumps(r) + "\n" for r in pair_records(2) + [{"prompt": "r", "responses": ["x", "y", "z"]}])
    result = admin.post("/admin/items/upload", data={"csrf_token": csrf, "format": "auto", "kind": "auto"},
                        files={"file": ("items.jsonl", upload)})
    assert result.status_code == 200 and "Imported 3 records (responses) as 3 items" in result.text
    saved = admin.post("/admin/settings", data={"csrf_token": csrf, "overlap": "2", "guidelines": "Be <b>kind</b>."})
    assert saved.status_code == 303 and store.overlap == 2
    assert admin.post("/admin/settings", data={"csrf_token": csrf, "overlap": "x"}).status_code == 422
    made = admin.post("/admin/users", data={"csrf_token": csrf, "name": "dan", "password": PASSWORD})
    assert made.status_code == 303 and store.user_by_name("dan").role == "annotator"
    assert "Created dan." in admin.get(made.headers["location"]).text
    dan = store.user_by_name("dan")
    reset = admin.post(f"/admin/users/{dan.id}/password", data={"csrf_token": csrf, "password": "dan's new secret"})
    assert reset.status_code == 303 and "New password set for dan." in admin.get(reset.headers["location"]).text
    assert store.user_by_name("dan").password_hash != dan.password_hash
    weak = admin.post(f"/admin/users/{dan.id}/password", data={"csrf_token": csrf, "password": "dan12345"})
    assert weak.status_code == 422 and "besides the account" in weak.text
    invite = admin.post("/admin/invites", data={"csrf_token": csrf, "role": "annotator"})
    assert re.search(r'id="invite-url" value="http://testserver/invite/[\w-]+"', invite.text)
    dashboard = admin.get("/admin").text
    assert "3 items to annotate (3 in all)" in dashboard and "overlap 2 annotators per item" in dashboard
    for path in ("/admin/users", "/admin/items", "/admin/settings", "/admin/export", "/guidelines"):
        assert admin.get(path).status_code == 200, path
    assert "Be &lt;b&gt;kind&lt;/b&gt;." in admin.get("/guidelines").text
    exported = admin.get("/admin/export/file", params={"format": "rich", "round": ""})
    assert exported.status_code == 200 and exported.text == ""
    store.close()


def test_annotator_forms_for_each_item_kind(tmp_path):
    store = make_store(tmp_path / "f.db")
    store.add_items(pair_records(1) + [{"prompt": "r", "responses": ["x", "y", "z"]}, {"prompt": "s", "responses": ["w"]}])
    ann, csrf = signed_in(make_app(store), "ann")
    seen = set()
    while "Nothing left" not in (page := ann.get("/queue").text):
        if 'action="/queue/next"' in page:  # nothing taken yet: a GET never takes an item
            assert ann.post("/queue/next", data={"csrf_token": csrf}).status_code == 303
            continue
        kind = re.search(r'data-kind="(\w+)"', page).group(1)
        action = re.search(r'action="(/queue/\d+)"', page).group(1)
        ids = re.findall(r'data-response-id="(\d+)"', page) or re.findall(r'name="rating-(\d+)-helpfulness"', page)
        data = {"csrf_token": csrf, "critique": "ok"}
        if kind == "pair":
            bad = ann.post(action, data={**data, "choice": "a"})
            assert bad.status_code == 422 and "strength" in bad.text
            data.update(choice="a", strength="3")
        elif kind == "ranking":
            data["ranking"] = ",".join(reversed(ids))
        else:
            data.update({f"rating-{ids[0]}-{a}": "4" for a in ("helpfulness", "harmlessness", "coherence", "accuracy")})
        assert ann.post(action, data=data).status_code == 303
        seen.add(kind)
    assert seen == {"pair", "ranking", "rating"}
    assert "Done 3" in page
    rows = {r["kind"]: r for r in store.judgment_rows()}
    assert rows["pair"]["choice"] == "a" and rows["pair"]["strength"] == 3
    assert rows["rating"]["ratings"] == {rows["rating"]["responses"][0]["id"]: {
        "helpfulness": 4, "harmlessness": 4, "coherence": 4, "accuracy": 4}}
    assert rows["ranking"]["ranking"] == [r["id"] for r in rows["ranking"]["responses"]][::-1]
    store.close()
