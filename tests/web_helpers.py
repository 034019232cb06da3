"""Helpers for the web app tests: a store with an admin and an annotator, and signed-in API clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from alignloop.feedback import open_store
from alignloop.web.app import WebSettings, create_app
from alignloop.web.security import hash_password

PASSWORD = "correct horse battery"
ADMIN_HASH = hash_password(PASSWORD)  # hashed once: argon2 is slow on purpose


def make_store(target: str | Path):
    store = open_store(target)
    store.add_user("admin", ADMIN_HASH, role="admin")
    store.add_user("ann", ADMIN_HASH)
    return store


def make_app(store, **settings: Any):
    """The app for `store`; the test client's host name `testserver` is one of its own."""
    settings.setdefault("allowed_hosts", ("testserver",))
    return create_app(store, WebSettings(**settings))


def api_client(app, name: str | None = None) -> TestClient:
    """A client signed in through the API as `name` (or anonymous), sending its CSRF header."""
    client = TestClient(app, base_url="http://testserver", follow_redirects=False)
    if name is not None:
        response = client.post("/api/login", json={"name": name, "password": PASSWORD})
        assert response.status_code == 200, response.text
        client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


def pair_records(n: int, prefix: str = "p") -> list[dict[str, Any]]:
    return [{"prompt": f"{prefix}{i}", "responses": [f"{prefix}{i} first", f"{prefix}{i} second"]} for i in range(n)]
