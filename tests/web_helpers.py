"""Helpers for the web app tests: a store with an admin and an annotator, and signed-in API clients."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
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


class Served:
    """`alignloop serve` running in a subprocess: its base URL, process and combined output."""

    def __init__(self, base: str, process: subprocess.Popen, log: Path):
        self.base, self.process, self.log = base, process, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def served(db: str | Path, *args: str, log: Path) -> Iterator[Served]:
    """Run `alignloop serve --db DB --port 0 ARGS` (output to `log`) until the block ends.

    The URL is read from the line the command prints, so this also checks that
    `--port 0` reports the port actually bound.
    """
    from conftest import cli_env

    command = [sys.executable, "-m", "alignloop", "serve", "--db", str(db), "--port", "0", *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env=cli_env(PYTHONUNBUFFERED="1", COLUMNS="200"))
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"annotation app on (http://127\.0\.0\.1:(\d+))/", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        base = found.group(1)
        assert int(found.group(2)) > 0
        while True:  # printed just before uvicorn starts taking requests
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield Served(base, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
