"""Security of the web app: sessions, roles, CSRF, escaping, SQL-looking input, body size, and the
hardening of issue 18 (one test per attack: throttled sign-in, invite floods, bounded memory and overlap,
password changes, log redaction, Host checks, file modes, 4xx for bad input, claims on POST only, ...).

The attacks run against the app over real HTTP (a uvicorn server in a thread, or `alignloop serve` in a
subprocess) where concurrency or the server itself matters, and through the ASGI test client otherwise.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.testclient import TestClient
from web_helpers import PASSWORD, api_client, make_app, make_store, pair_records, served

from alignloop.errors import DataError
from alignloop.feedback import open_store
from alignloop.feedback.names import name_key
from alignloop.feedback.queue import MAX_OVERLAP, first_free_slot
from alignloop.feedback.store import Conflict
from alignloop.runs import RunDir
from alignloop.web.routes import docs, export, items, settings, stats, users
from alignloop.web.routes.auth import NAME_REFUSED
from alignloop.web.security import check_password, new_token
from alignloop.web.server import background, redact
from alignloop.web.throttle import Throttle, wait_after

PUBLIC = {"/login", "/api/login", "/healthz", "/invite/{token}"}
ADMIN_ROUTERS = (users.router, items.router, settings.router, stats.router, export.router, docs.router)
NEW_PASSWORD = "a different long secret"


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


# ---- issue 18: the hardening, one test per attack ------------------------------------------------

def _login_csrf(client) -> str:  # noqa: ANN001
    """The sign-in page's CSRF token (also set as a cookie on `client`)."""
    page = client.get("/login")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def _parallel(count: int, work) -> list:  # noqa: ANN001
    """Run work(i) for i < count in threads released at once; returns the results in order."""
    barrier = threading.Barrier(count)

    def run(i: int):  # noqa: ANN202
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


# 18.1
def test_a_parallel_burst_of_wrong_passwords_is_counted_before_the_slow_check(store):
    # Long waits, so that however slowly the burst arrives no wait runs out during the test.
    with background(make_app(store, login_delay_s=600.0)) as base:
        def guess(i: int) -> int:
            with httpx.Client(base_url=base, timeout=300) as client:
                return client.post("/api/login", json={"name": "ann", "password": f"wrong guess {i}"}).status_code

        assert sorted(_parallel(12, guess)) == [401] * 5 + [429] * 7
        assert httpx.post(f"{base}/api/login", json={"name": "ann", "password": PASSWORD}).status_code == 429


# 18.2
def test_failures_from_one_address_never_lock_the_account_out_from_another(store):
    app = make_app(store, forwarded_allow_ips="127.0.0.1", login_delay_s=600.0)
    with background(app) as base:  # behind a proxy on loopback that forwards the client's address
        def login(address: str, password: str) -> int:
            return httpx.post(f"{base}/api/login", json={"name": "admin", "password": password},
                              headers={"X-Forwarded-For": address}).status_code

        assert [login("203.0.113.7", "not the password") for _ in range(5)] == [401] * 5
        assert login("203.0.113.7", PASSWORD) == 429  # that address now waits...
        assert login("198.51.100.2", PASSWORD) == 200  # ...the admin elsewhere does not

    # Without a trusted proxy, a client's own X-Forwarded-For is ignored: it cannot buy a fresh address.
    direct = api_client(make_app(store, login_delay_s=600.0))
    for i in range(5):
        wrong = direct.post("/api/login", json={"name": "ann", "password": "not the password"},
                            headers={"X-Forwarded-For": f"192.0.2.{i}"})
        assert wrong.status_code == 401
    spoofed = direct.post("/api/login", json={"name": "ann", "password": PASSWORD},
                          headers={"X-Forwarded-For": "192.0.2.99"})
    assert spoofed.status_code == 429


def test_waits_grow_then_run_out_and_one_address_cannot_try_every_name(store):
    assert [wait_after(n, 5, 1.0, 300.0) for n in (0, 4, 5, 6, 7, 40)] == [0.0, 0.0, 1.0, 2.0, 4.0, 300.0]
    throttle = Throttle(delay_s=1.0)
    assert [throttle.reserve({"k": 2}) for _ in range(3)] == [None, None, 1]
    threading.Event().wait(1.1)  # a wait, not a lock: once it has passed, the next attempt may go
    assert throttle.reserve({"k": 2}) is None and throttle.reserve({"k": 2}) == 2  # and the next wait is longer

    sprayer = api_client(make_app(store, address_free_failures=3, login_delay_s=600.0))
    for name in ("amy", "bea", "cal"):
        assert sprayer.post("/api/login", json={"name": name, "password": "Summer2024!"}).status_code == 401
    assert sprayer.post("/api/login", json={"name": "dan", "password": "Summer2024!"}).status_code == 429


# 18.3
def test_an_invite_flood_hashes_nothing_for_bad_links_and_few_passwords_at_once(store):
    app = make_app(store, invite_free_failures=1000, hash_slots=2)
    gate = app.state.guards.hashes
    token = new_token()
    store.create_invite(token, None)
    with background(app) as base:
        def sign_up(path: str, name: str) -> int:
            with httpx.Client(base_url=base, timeout=300) as client:
                form = {"csrf_token": _login_csrf(client), "name": name, "password": PASSWORD, "password2": PASSWORD}
                return client.post(path, data=form).status_code

        unknown = _parallel(16, lambda i: sign_up(f"/invite/{new_token()}", f"nobody{i}"))
        assert unknown == [404] * 16 and gate.total == 0  # the link is checked before any hashing
        valid = _parallel(12, lambda i: sign_up(f"/invite/{token}", f"newcomer{i}"))
    assert sorted(valid).count(303) == 1 and set(valid) <= {303, 404}
    assert 1 <= gate.peak <= 2  # never more than hash_slots argon2 hashes at once
    assert sum(u.name.startswith("newcomer") for u in store.list_users()) == 1


def _peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_an_invite_flood_does_not_take_the_memory_of_the_server(tmp_path):
    """A real `alignloop serve` with its default settings: 12 sign-ups at once on one link (each an
    argon2 hash of 64 MiB) raise its peak memory by far less than 12 hashes would."""
    store = make_store(tmp_path / "f.db")
    token = new_token()
    store.create_invite(token, None)
    store.close()
    with served(tmp_path / "f.db", log=tmp_path / "serve.log") as app:
        before = _peak_rss_mib(app.process.pid)

        def sign_up(i: int) -> int:
            with httpx.Client(base_url=app.base, timeout=300) as client:
                form = {"csrf_token": _login_csrf(client), "name": f"flood{i}", "password": PASSWORD,
                        "password2": PASSWORD}
                return client.post(f"/invite/{token}", data=form).status_code

        codes = _parallel(12, sign_up)
        growth = _peak_rss_mib(app.process.pid) - before
        assert httpx.get(f"{app.base}/healthz").status_code == 200
    assert codes.count(303) == 1 and set(codes) <= {303, 404, 429}
    assert growth < 4 * 64, f"peak memory grew by {growth:.0f} MiB"


# 18.4
def test_the_throttle_keeps_a_bounded_number_of_keys(store):
    throttle = Throttle(max_keys=100)
    for i in range(10_000):
        throttle.reserve({f"name-{i}": 5})
    assert len(throttle) == 100
    app = make_app(store, throttle_max_keys=6)
    client = api_client(app)
    for i in range(10):
        client.post("/api/login", json={"name": f"guess{i}", "password": "wrong password"})
    assert len(app.state.guards.throttle) <= 6


# 18.5
def test_overlap_is_bounded_on_every_path_and_claims_never_build_a_range(app, store):
    admin = api_client(app, "admin")
    huge = {"prompt": "p", "responses": ["a", "b"], "overlap": 10**12}
    assert admin.post("/api/items", json={"records": [huge]}).status_code == 422
    upload = admin.post("/api/items/upload", files={"file": ("x.jsonl", json.dumps({**huge, "overlap": 51}) + "\n")})
    assert upload.status_code == 422 and "1 to 50" in upload.json()["detail"]
    assert admin.put("/api/settings", json={"overlap": 51}).status_code == 422
    for bad in (0, 51, True, 2.0, 10**12):
        with pytest.raises(DataError, match="overlap"):
            store.add_samples(None, [{"prompt": "p", "responses": ["a", "b"]}], overlap=bad)
    assert store.counts()["items"] == 0
    assert admin.post("/api/items", json={"records": [{**huge, "overlap": MAX_OVERLAP}]}).status_code == 201
    assert first_free_slot({0, 1, 2}, 10**12) == 3 and first_free_slot(set(range(MAX_OVERLAP)), 10**12) is None


def test_the_migration_clamps_stored_overlaps_and_keys_existing_names(tmp_path):
    from sqlalchemy import text

    from alignloop.feedback import db as feedback_db

    url = feedback_db.database_url(tmp_path / "old.db")
    write, read = feedback_db.make_engines(url)
    feedback_db.upgrade(write, "0002")
    now = "'2024-01-01 00:00:00'"
    with write.begin() as conn:
        for name in ("Ann", "ann", "bob"):
            conn.execute(text(f"INSERT INTO users (name, role, active, origin, created_at) "
                              f"VALUES ('{name}', 'annotator', true, 'person', {now})"))
        conn.execute(text(f"INSERT INTO prompts (id, text, created_at) VALUES (1, 'p', {now})"))
        for item_id, overlap in ((1, 10**12), (2, 0), (3, 3)):
            conn.execute(text(f"INSERT INTO items (id, prompt_id, kind, overlap, queued, created_at) "
                              f"VALUES ({item_id}, 1, 'pair', {overlap}, true, {now})"))
    write.dispose()
    read.dispose()
    with open_store(tmp_path / "old.db") as store, store.read() as s:
        assert dict(s.execute(text("SELECT id, overlap FROM items")).all()) == {1: 50, 2: None, 3: 3}
        keys = dict(s.execute(text("SELECT name, name_key FROM users")).all())
    assert keys["Ann"] == "ann" and keys["ann"].startswith("ann\n#") and keys["bob"] == "bob"


# 18.6
def test_changing_a_password_signs_out_every_other_session(app, store):
    first, second = api_client(app, "ann"), api_client(app, "ann")
    wrong = first.post("/api/me/password", json={"current_password": "not it at all", "new_password": NEW_PASSWORD})
    assert wrong.status_code == 403
    changed = first.post("/api/me/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert changed.status_code == 200 and changed.json()["other_sessions_ended"] == 1
    assert second.get("/api/me").status_code == 401 and first.get("/api/me").status_code == 200
    anonymous = api_client(app)
    assert anonymous.post("/api/login", json={"name": "ann", "password": PASSWORD}).status_code == 401
    assert anonymous.post("/api/login", json={"name": "ann", "password": NEW_PASSWORD}).status_code == 200

    # An admin's reset ends every session of the account.
    admin = api_client(app, "admin")
    reset = admin.post(f"/api/users/{store.user_by_name('ann').id}/password", json={"password": "reset by the admin"})
    assert reset.status_code == 200 and reset.json()["sessions_ended"] == 2
    assert first.get("/api/me").status_code == 401

    # The account page does the same for people.
    client = TestClient(app, follow_redirects=False)
    client.post("/login", data={"name": "ann", "password": "reset by the admin", "csrf_token": _login_csrf(client)})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/account").text).group(1)
    form = {"csrf_token": csrf, "current_password": "reset by the admin", "new_password": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD}
    assert client.post("/account/password", data=form).headers["location"] == "/account?changed=1"
    assert "other sessions were signed out" in client.get("/account?changed=1").text


# 18.7
def test_invite_tokens_never_reach_the_access_log(tmp_path):
    assert redact('127.0.0.1:5 - "GET /invite/abc-DEF_1?x=1 HTTP/1.1" 200') == \
        '127.0.0.1:5 - "GET /invite/[redacted]?x=1 HTTP/1.1" 200'
    store = make_store(tmp_path / "f.db")
    token = new_token()
    store.create_invite(token, None)
    store.close()
    with served(tmp_path / "f.db", log=tmp_path / "serve.log") as app:
        with httpx.Client(base_url=app.base) as client:
            assert client.get(f"/invite/{token}").status_code == 200
            form = {"csrf_token": _login_csrf(client), "name": "x", "password": "short", "password2": "short"}
            assert client.post(f"/invite/{token}", data=form).status_code == 422
            assert client.get("/healthz").status_code == 200
        threading.Event().wait(0.5)
        log = app.output()
    assert "/invite/[redacted]" in log and log.count("/healthz") >= 1
    assert token not in log


# 18.8
def test_a_host_header_that_is_not_ours_is_refused(tmp_path, store):
    client = api_client(make_app(store))
    assert client.get("/login", headers={"host": "rebind.attacker.example"}).status_code == 400
    for host in ("testserver", "127.0.0.1:8000", "[::1]:8000", "localhost", "10.1.2.3"):
        assert client.get("/login", headers={"host": host}).status_code == 200, host

    public = api_client(make_app(store, public_url="https://annotate.example.org/"), "admin")
    public.headers["host"] = "annotate.example.org"
    url = public.post("/api/invites", json={}).json()["url"]
    assert url.startswith("https://annotate.example.org/invite/")  # never from the request's Host

    with served(tmp_path / "served.db", "--public-url", "https://annotate.example.org",
                log=tmp_path / "serve.log") as app:
        assert httpx.get(f"{app.base}/login", headers={"Host": "rebind.attacker.example"}).status_code == 400
        assert httpx.get(f"{app.base}/login", headers={"Host": "annotate.example.org"}).status_code == 200


# 18.9
def test_a_valid_invite_is_not_an_oracle_of_the_names_that_exist(store):
    token = new_token()
    store.create_invite(token, None)
    client = api_client(make_app(store, invite_free_failures=3, login_delay_s=600.0))
    csrf = _login_csrf(client)
    answers = [client.post(f"/invite/{token}", data={"csrf_token": csrf, "name": name, "password": PASSWORD,
                                                     "password2": PASSWORD})
               for name in ("ann", "ANN", "\u0430nn")]  # taken, and its case and Cyrillic look-alikes
    for answer in answers:
        assert answer.status_code == 422 and NAME_REFUSED in answer.text and "exists" not in answer.text
    again = client.post(f"/invite/{token}", data={"csrf_token": csrf, "name": "free-name", "password": PASSWORD,
                                                  "password2": PASSWORD})
    assert again.status_code == 429 and store.invite_valid(token)


# 18.10
def test_common_passwords_and_the_account_name_are_refused(app, store):
    with pytest.raises(DataError, match="common"):
        check_password("Password123")
    for password in ("dana2024", "DANA-dana-dana", "ｄａｎａ1234"):
        with pytest.raises(DataError, match="name"):
            check_password(password, "dana")
    check_password(PASSWORD, "ann")
    check_password("Joanna's secret", "ann")
    admin = api_client(app, "admin")
    for name, password, reason in (("eve", "qwertyuiop", "common"), ("eve", "Eve12345", "name")):
        refused = admin.post("/api/users", json={"name": name, "password": password})
        assert refused.status_code == 422 and reason in refused.json()["detail"]
    assert store.user_by_name("eve") is None


# 18.11
@pytest.mark.parametrize("store_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_input_that_used_to_give_500_gets_a_4xx(store_url):
    store = make_store(store_url)
    app = make_app(store)
    store.add_items(pair_records(1))
    admin, ann = api_client(app, "admin"), api_client(app, "ann")
    assignment = ann.post("/api/queue/next").json()["assignment"]
    beyond = 2**64 + 1
    for client, method, path in ((admin, "GET", f"/api/items/{beyond}"), (ann, "GET", f"/api/assignments/{beyond}"),
                                 (ann, "POST", f"/api/assignments/{2**40}/skip"), (admin, "POST", f"/api/items/{beyond}/gold"),
                                 (admin, "GET", f"/api/stats/agreement?round={beyond}"),
                                 (admin, "GET", "/api/export?round=%C2%B2"), (admin, "GET", "/admin/export/file?round=1e3")):
        assert 400 <= client.request(method, path, json={}).status_code < 500, path
    upload = admin.post("/api/items/upload", files={"file": ("x.jsonl", "{}\n")}, data={"round": "\u00b2"})
    assert upload.status_code == 422
    form = {"csrf_token": ann.headers["X-CSRF-Token"], "choice": "a", "strength": "1", "rating-5": "3"}
    assert ann.post(f"/queue/{assignment['id']}", data=form).status_code == 422
    surrogate = ann.post("/api/login", content=b'{"name": "\\ud800", "password": "whatever it is"}',
                         headers={"content-type": "application/json"})
    assert surrogate.status_code == 422
    store.close()


def test_a_500_still_carries_the_security_headers(store):
    app = make_app(store)

    @app.get("/api/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    client.post("/api/login", json={"name": "ann", "password": PASSWORD})
    response = client.get("/api/boom")
    assert response.status_code == 500 and "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY" and "a bug" not in response.text


# 18.12
def test_lone_surrogates_are_refused_at_input_and_every_page_still_reads(app, store):
    admin = api_client(app, "admin")
    raw = {"content-type": "application/json"}
    assert admin.put("/api/settings", content=b'{"guidelines": "be kind \\udc00"}', headers=raw).status_code == 422
    item = b'{"records": [{"prompt": "p", "responses": ["a", "b"], "meta": {"note": "\\ud83d"}}]}'
    assert admin.post("/api/items", content=item, headers=raw).status_code == 422
    upload = admin.post("/api/items/upload", files={"file": ("x.jsonl", '{"prompt": "p\\udfff", "responses": ["a", "b"]}\n')})
    assert upload.status_code == 422 and "surrogate" in upload.json()["detail"]
    with pytest.raises(DataError, match="surrogate"):
        store.set_guidelines("x\ud800")
    assert store.counts()["items"] == 0
    assert admin.get("/api/settings").status_code == 200 and admin.get("/guidelines").status_code == 200


# 18.13
def test_the_store_and_the_run_directory_are_readable_by_their_owner_only(tmp_path):
    previous = os.umask(0o022)
    try:
        run = RunDir(tmp_path / "run").ensure()
        files = [run.feedback_db, *(run.feedback_db.with_name(run.feedback_db.name + end) for end in ("-wal", "-shm"))]
        with open_store(run.feedback_db) as store:
            store.add_user("ann", None)
            assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o600] * 3  # -wal, -shm exist while open
            for file in files:  # as an older version left them: tightened when the store is next opened
                file.chmod(0o644)
            with open_store(run.feedback_db) as again:
                again.add_user("bob", None)
                assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o600] * 3
        assert stat.S_IMODE(run.root.stat().st_mode) == 0o700
    finally:
        os.umask(previous)


# 18.14
def test_taking_an_item_is_a_post_and_a_get_claims_nothing(app, store):
    store.add_items(pair_records(2))
    ann = api_client(app, "ann")
    ann_id = store.user_by_name("ann").id
    assert ann.get("/api/queue/next").status_code == 405
    assert 'action="/queue/next"' in ann.get("/queue").text
    assert ann.get("/api/queue/current").json() == {"assignment": None}
    csrf = ann.headers.pop("X-CSRF-Token")
    assert ann.post("/queue/next").status_code == 403  # what a cross-site form could send
    assert store.current_assignment(ann_id) is None and store.progress(ann_id).remaining == 2
    assert ann.post("/queue/next", data={"csrf_token": csrf}).status_code == 303
    taken = store.current_assignment(ann_id)
    assert taken is not None and f'action="/queue/{taken.id}"' in ann.get("/queue").text


# 18.15
def test_the_users_page_shows_no_text_from_its_url(app, store):
    admin = api_client(app, "admin")
    assert "alert(1)" not in admin.get("/admin/users", params={"created": "<script>alert(1)</script>"}).text
    assert "alert(1)" not in admin.get("/admin/users?created=1&created=<b>alert(1)</b>").text
    page = admin.get("/admin/users", params={"created": store.user_by_name("ann").id}).text
    assert "Created ann." in page
    refused = admin.post("/api/users", json={"name": "eve", "password": "a password that never echoes", "x": 1})
    assert refused.status_code == 422 and "never echoes" not in refused.text  # bodies are not reflected


# 18.16
def test_time_spent_is_measured_by_the_server(app, store):
    store.add_items(pair_records(2))
    ann = api_client(app, "ann")
    forged = 86_400_000
    first = ann.post("/api/queue/next").json()["assignment"]
    sent = ann.post(f"/api/assignments/{first['id']}/judgment", json={"choice": "A", "strength": 1,
                                                                     "time_spent_ms": forged})
    assert sent.status_code == 201
    second = ann.post("/api/queue/next").json()["assignment"]
    form = {"csrf_token": ann.headers["X-CSRF-Token"], "choice": "b", "strength": "2", "time_spent_ms": str(forged)}
    assert ann.post(f"/queue/{second['id']}", data=form).status_code == 303
    rows = store.judgment_rows()
    assert len(rows) == 2 and all(0 <= row["time_spent_ms"] < forged for row in rows)
    assert sorted(row["choice"] for row in rows) == ["a", "b"]  # "A" is accepted as "a"


# 18.17
def test_reserved_prefixes_and_look_alike_names_cannot_be_taken(app, store):
    for name in ("import:trl", "IMPORT:trl", "ｉｍｐｏｒｔ:hh", "sim-ada", "ad\u200bmin"):
        with pytest.raises(DataError):
            store.add_user(name, None)
    for name in ("Admin", "ＡＤＭＩＮ", "\u0430dmin", "\u0430\u0501min"):  # case, full width, Cyrillic а and ԁ
        assert name_key(name) == "admin"
        with pytest.raises(Conflict):
            store.add_user(name, None)
    store.add_user("sim-ada", None, origin="simulated")
    with pytest.raises(DataError, match="person account"):
        store.import_preferences([{"prompt": "p", "chosen": "a", "rejected": "b", "annotator": "ANN"}], "x")
    assert store.counts()["judgments"] == 0
    admin = api_client(app, "admin")
    assert admin.post("/api/users", json={"name": "import:hh", "password": PASSWORD}).status_code == 422
    assert api_client(app).post("/api/login", json={"name": "ADMIN", "password": PASSWORD}).status_code == 200


# 18.18
def test_an_annotators_large_upload_is_refused_before_its_body_is_read(store):
    with background(make_app(store)) as base:
        login = httpx.post(f"{base}/api/login", json={"name": "ann", "password": PASSWORD})
        cookie, csrf = login.cookies["alignloop_session"], login.json()["csrf_token"]
        host, port = urlsplit(base).hostname, urlsplit(base).port
        head = (f"POST /api/items/upload HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: alignloop_session={cookie}\r\n"
                f"X-CSRF-Token: {csrf}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {30 << 20}\r\n\r\n--b\r\n").encode()
        with socket.create_connection((host, port)) as sock:
            sock.sendall(head + b"y" * 65536)  # 64 KiB of the announced 30 MiB, then wait for the answer
            sock.settimeout(120)  # the old code would wait here for the other 30 MiB
            answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403")


# ---- issue 17.10: the API's schema, for admins ---------------------------------------------------

def test_the_api_schema_is_served_to_admins_only(app):
    assert api_client(app).get("/api/docs").status_code == 401
    assert api_client(app, "ann").get("/api/docs").status_code == 403
    schema = api_client(app, "admin").get("/api/docs").json()
    assert schema["openapi"].startswith("3.") and all(path.startswith("/api/") for path in schema["paths"])
    assert {"/api/queue/next", "/api/assignments/{assignment_id}/judgment", "/api/users/{user_id}/password"} \
        <= set(schema["paths"])
    assert "post" in schema["paths"]["/api/queue/next"] and "get" not in schema["paths"]["/api/queue/next"]
