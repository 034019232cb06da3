"""Security of the web app: sessions, roles, CSRF, escaping, SQL-looking input, body size, login rate limit."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from web_helpers import PASSWORD, api_client, make_app, make_store, pair_records

from alignloop.web.routes import export, items, settings, stats, users

PUBLIC = {"/login", "/api/login", "/healthz", "/invite/{token}"}
ADMIN_ROUTERS = (users.router, items.router, settings.router, stats.router, export.router)


@pytest.fixture
def store(tmp_path):
    opened = make_store(tmp_path / "feedback.db")
    yield opened
    opened.close()


@pytest.fixture
def app(store):
    return make_app(store)


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def _api_routes(routes):
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI >= 0.130 wraps included routers
        if included is not None:
            yield from _api_routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


def _routes(app):
    for route in _api_routes(app.routes):
        for method in sorted(route.methods):
            yield method, route.path


def test_every_route_but_login_needs_a_session(app):
    anonymous = api_client(app)
    checked = 0
    for method, path in _routes(app):
        if path in PUBLIC:
            continue
        response = anonymous.request(method, _concrete(path))
        if path.startswith("/api/"):
            assert response.status_code == 401, (method, path, response.status_code)
        else:
            assert response.status_code == 303 and response.headers["location"].startswith("/login"), (method, path)
        checked += 1
    assert checked >= 35
    assert anonymous.get("/login").status_code == 200
    assert anonymous.get("/static/app.js").status_code == 200


def test_annotators_get_403_on_every_admin_route_and_export(app):
    annotator = api_client(app, "ann")
    admin_paths = {(m, r.path) for router in ADMIN_ROUTERS for r in router.routes for m in r.methods}
    assert ("GET", "/api/export") in admin_paths and ("GET", "/admin/export/file") in admin_paths
    for method, path in sorted(admin_paths):
        response = annotator.request(method, _concrete(path))
        assert response.status_code == 403, (method, path, response.status_code)
    assert annotator.post("/api/queue/next").status_code == 200


def test_annotators_see_only_their_own_assignments(app, store):
    store.add_items(pair_records(2))
    store.add_user("bob", store.user_by_name("ann").password_hash)
    ann, bob = api_client(app, "ann"), api_client(app, "bob")
    mine = ann.post("/api/queue/next").json()["assignment"]
    assert bob.get(f"/api/assignments/{mine['id']}").status_code == 404
    assert bob.post(f"/api/assignments/{mine['id']}/judgment", json={"choice": "a", "strength": 1}).status_code == 404
    assert bob.post(f"/api/assignments/{mine['id']}/skip").status_code == 404
    assert ann.post(f"/api/assignments/{mine['id']}/judgment", json={"choice": "a", "strength": 1}).status_code == 201
    bob.post("/api/queue/next")
    text = bob.get("/queue").text
    assert "choice" in text and str(mine["id"]) not in re.findall(r'action="/queue/(\d+)"', text)


def test_state_changes_need_the_csrf_token(app, store):
    store.add_items(pair_records(1))
    ann = api_client(app, "ann")
    assignment = ann.post("/api/queue/next").json()["assignment"]
    url = f"/api/assignments/{assignment['id']}/judgment"
    token = ann.headers.pop("X-CSRF-Token")
    assert ann.post(url, json={"choice": "a", "strength": 1}).status_code == 403
    assert ann.post(url, json={"choice": "a", "strength": 1}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert ann.post(f"/queue/{assignment['id']}", data={"choice": "a", "strength": "1"}).status_code == 403
    assert ann.post(f"/queue/{assignment['id']}", data={"choice": "a", "strength": "1",
                                                         "csrf_token": "forged"}).status_code == 403
    assert ann.post("/logout").status_code == 403
    assert store.counts()["judgments"] == 0
    ok = ann.post(f"/queue/{assignment['id']}", data={"choice": "a", "strength": "1", "csrf_token": token})
    assert ok.status_code == 303 and store.counts()["judgments"] == 1

    admin = api_client(app, "admin")
    admin.headers.pop("X-CSRF-Token")
    assert admin.post("/api/users", json={"name": "x", "password": PASSWORD}).status_code == 403
    assert admin.put("/api/settings", json={"overlap": 3}).status_code == 403
    assert store.user_by_name("x") is None and store.overlap == 1

    anonymous = api_client(app)
    assert anonymous.post("/login", data={"name": "ann", "password": PASSWORD}).status_code == 403
    assert anonymous.post("/api/login", data={"name": "ann", "password": PASSWORD}).status_code == 403


def test_model_output_is_escaped_and_sql_looking_input_stored_verbatim(app, store):
    payload = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
    sql = "Robert'); DROP TABLE judgments; -- \" OR 1=1"
    store.add_items([{"prompt": sql, "responses": [payload, sql]}])
    ann = api_client(app, "ann")
    ann.post("/api/queue/next")
    page = ann.get("/queue").text
    assert "<script>document" not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in page
    assert "default-src 'self'" in ann.get("/queue").headers["content-security-policy"]
    assignment = ann.post("/api/queue/next").json()["assignment"]
    response = ann.post(f"/api/assignments/{assignment['id']}/judgment",
                        json={"choice": "b", "strength": 3, "critique": sql, "rewrite": payload})
    assert response.status_code == 201
    [row] = store.judgment_rows()
    assert row["prompt"] == sql and row["critique"] == sql and row["rewrite"] == payload
    assert [r["text"] for r in row["responses"]] == [payload, sql]


def test_oversized_bodies_get_413(store):
    app = make_app(store, max_body_bytes=10_000, max_upload_bytes=50_000)
    store.add_items(pair_records(1))
    ann = api_client(app, "ann")
    assignment = ann.post("/api/queue/next").json()["assignment"]
    big = ann.post(f"/api/assignments/{assignment['id']}/judgment",
                   json={"choice": "a", "strength": 1, "critique": "x" * 20_000})
    assert big.status_code == 413
    streamed = ann.post(f"/api/assignments/{assignment['id']}/judgment",
                        content=iter([b'{"choice": "a", "critique": "', b"x" * 20_000, b'"}']),
                        headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    admin = api_client(app, "admin")
    upload = admin.post("/api/items/upload", files={"file": ("x.jsonl", "y" * 60_000)})
    assert upload.status_code == 413
    assert store.counts()["judgments"] == 0


def test_repeated_failed_logins_get_429(app):
    client = api_client(app)
    for _ in range(5):
        assert client.post("/api/login", json={"name": "ann", "password": "wrong password"}).status_code == 401
    limited = client.post("/api/login", json={"name": "ann", "password": PASSWORD})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    form = client.get("/login")
    csrf = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert client.post("/login", data={"name": "ann", "password": PASSWORD, "csrf_token": csrf}).status_code == 429


def test_session_cookie_is_httponly_and_samesite_and_there_is_no_default_account(tmp_path):
    from alignloop.feedback import open_store

    with open_store(tmp_path / "empty.db") as empty:
        assert empty.list_users() == []
        client = api_client(make_app(empty))
        assert client.post("/api/login", json={"name": "admin", "password": "admin"}).status_code == 401
    store = make_store(tmp_path / "f.db")
    response = api_client(make_app(store)).post("/api/login", json={"name": "ann", "password": PASSWORD})
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "alignloop_session=" in cookie
    assert store.user_by_name("ann").password_hash.startswith("$argon2id$")
    store.close()
